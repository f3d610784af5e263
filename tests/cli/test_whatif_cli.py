"""`polychip whatif` and `plan --objective`: options ranked by gain per cost, the JSON
interface names, and bad input (exit 2 naming the chip, the key and the fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polychip.cli import main

CLUSTER = """\
name: two-cpu
nodes:
  - {chip: cpu-slow, count: 1, chips_per_node: 2, nic_gbps: 10}
network: {kind: ethernet, latency_us: 50}
chips:
  cpu-mid: {vendor: cpu-c, device_type: cpu, torch_backend: gloo, collective_library: gloo,
            peak_tflops_bf16: 0.1, memory_gib: 8, memory_gbps: 40, intra_node_gbps: 10,
            compute_efficiency: 1.0, link_efficiency: 1.0, kernel_launch_us: 0}
"""
JOB = ["--model", "tiny", "--global-batch", "8", "--seq-len", "256"]


def _cluster(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "c.yaml"
    path.write_text(CLUSTER + extra)
    return str(path)


def test_whatif_ranks_additions_by_gain_per_cost(tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    code = main(["whatif", _cluster(tmp_path), *JOB, "--add", "cpu-fast:1", "--add",
                 "cpu-slow:2", "--json", str(out)])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    options = data["options"]
    assert {o["add"] for o in options} == {"cpu-fast:1", "cpu-slow:2"}
    for o in options:
        assert set(o) == {"add", "tokens_per_s", "gain_tokens_per_s", "added_cost",
                          "gain_per_cost"}  # fmt: skip
        assert o["gain_tokens_per_s"] == pytest.approx(o["tokens_per_s"] - data["tokens_per_s"])
        assert o["gain_per_cost"] == pytest.approx(o["gain_tokens_per_s"] / o["added_cost"])
    # catalog rents (fictional chips): cpu-fast 2.0 $/h (midpoint), cpu-slow 0.5 $/h each
    costs = {o["add"]: o["added_cost"] for o in options}
    assert costs == {"cpu-fast:1": pytest.approx(2.0), "cpu-slow:2": pytest.approx(1.0)}
    ratios = [o["gain_per_cost"] for o in options]
    assert ratios == sorted(ratios, reverse=True)


def test_whatif_budget_leaves_out_dearer_additions(tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    code = main(["whatif", _cluster(tmp_path), *JOB, "--add", "cpu-fast:1", "--add",
                 "cpu-slow:2", "--budget", "1.5", "--json", str(out)])  # fmt: skip
    assert code == 0
    assert [o["add"] for o in json.loads(out.read_text())["options"]] == ["cpu-slow:2"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--add", "cpu-fastest:1"], ["unknown chip 'cpu-fastest'", "cpu-fast"]),
        (["--add", "cpu-fast:1", "--budget", "0.1"], ["--budget 0.1 covers no addition"]),
        (["--add", "cpu-mid:1"], ["'cpu-mid'", "rent_usd_per_hour", "chips: {cpu-mid"]),
        (["--add", "cpu-fast"], ["CHIP:COUNT"]),
    ],
)
def test_whatif_bad_input_exits_2(tmp_path: Path, capsys, args: list[str], words) -> None:
    assert main(["whatif", _cluster(tmp_path), *JOB, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for word in words:
        assert word in err


def test_plan_objective_cost_without_rent_exits_2(tmp_path: Path, capsys) -> None:
    path = _cluster(tmp_path, "  # cpu-mid in a node, without a rent\n")
    text = Path(path).read_text().replace(
        "nodes:\n", "nodes:\n  - {chip: cpu-mid, count: 1, chips_per_node: 1, nic_gbps: 10}\n"
    )
    Path(path).write_text(text)
    assert main(["plan", path, *JOB, "--objective", "cost"]) == 2
    err = capsys.readouterr().err
    assert "'cpu-mid'" in err and "rent_usd_per_hour" in err


def test_plan_prints_the_ceiling_cost_and_energy(tmp_path: Path, capsys) -> None:
    assert main(["plan", _cluster(tmp_path), *JOB, "--objective", "cost"]) == 0
    text = capsys.readouterr().out
    assert "compute ceiling" in text
    assert "per million tokens (rent)" in text and "kWh" in text
