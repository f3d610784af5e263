"""`polychip plan` end to end, and bad input: exit 2 with one clear line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from polychip.cli import main
from polychip.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
CPU = str(ROOT / "examples" / "clusters" / "cpu-test.yaml")


def test_plan_writes_a_loadable_plan(tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            CPU,
            "--model",
            "tiny",
            "--global-batch",
            "16",
            "--seq-len",
            "256",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    plan = load_plan(out)
    assert plan.estimate is not None and plan.estimate.tokens_per_s > 0
    assert set(plan.baselines) == {"best_single_type", "naive_mixed"}
    text = capsys.readouterr().out
    for word in ("replicas", "tokens/s", "MFU", "best single type", "naive mixed", "ideal"):
        assert word in text


def test_plan_defaults_and_exhaustive(capsys) -> None:
    assert (
        main(
            [
                "plan",
                CPU,
                "--model",
                "tiny",
                "--exhaustive",
                "--max-stages",
                "2",
                "--global-batch",
                "8",
                "--seq-len",
                "128",
            ]
        )
        == 0
    )
    assert "exhaustive search" in capsys.readouterr().out


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polychip", "plan", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "yaml_text, args, expect",
    [
        (
            "nodes:\n  - {chip: h900, count: 1, chips_per_node: 8, nic_gbps: 100}\n",
            ["--model", "tiny"],
            "unknown chip 'h900'",
        ),
        (
            "nodes:\n  - {chip: h800, count: 0, chips_per_node: 8, nic_gbps: 100}\n",
            ["--model", "tiny"],
            "nodes[0].count",
        ),
        ("nodes: [ {chip: h800, count: 1\n", ["--model", "tiny"], "not valid YAML"),
        (
            "nodes:\n  - {chip: cpu-slow, count: 1, chips_per_node: 2, nic_gbps: 10}\n",
            ["--model", "llama3-70b"],
            "GiB",
        ),
        (
            "nodes:\n  - {chip: h800, count: 1, chips_per_node: 8, nic_gbps: 100}\n",
            ["--model", "no-such-model"],
            "unknown model",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, yaml_text, args, expect) -> None:
    (tmp_path / "c.yaml").write_text(yaml_text)
    proc = _run(["c.yaml", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("polychip plan: error: ") and expect in first
    # one message: only the unknown-chip error goes on, with the inline-declaration example
    assert proc.stderr.count("error:") == 1


def test_plan_simulate_reranks_and_labels_each_figure(tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "plan.json"
    args = [
        "plan",
        CPU,
        "--model",
        "tiny",
        "--global-batch",
        "16",
        "--seq-len",
        "64",
        "--simulate-top",
        "3",
        "--out",
        str(out_json),
    ]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0
    assert "analytic estimate (cost model): step" in out
    assert "candidates re-ranked by simulated step" in out
    assert "analytic (cost model)" in out and "simulated (event replay)" in out
    assert "critical path (simulated):" in out
    ranked = out[out.index("candidates re-ranked") : out.index("chosen plan: analytic")]
    assert ranked.count("chosen") == 1
    # the written plan is the one the simulator chose, with its analytic estimate
    saved = load_plan(out_json)
    assert saved.estimate.source == "analytic"
    assert any(n.startswith("chosen by simulated step") for n in saved.notes)


def test_plan_without_simulate_prints_no_simulated_figure(capsys) -> None:
    rc = main(["plan", CPU, "--model", "tiny", "--global-batch", "16", "--seq-len", "64"])
    out = capsys.readouterr().out
    assert rc == 0 and "simulated" not in out


def test_plan_simulate_top_zero_exits_2(tmp_path: Path) -> None:
    proc = _run([CPU, "--model", "tiny", "--simulate-top", "0"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--simulate-top 0 must be >= 1" in proc.stderr
