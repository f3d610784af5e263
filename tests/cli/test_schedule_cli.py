"""Schedules at the command line: `plan --schedule` (auto by default, or forced), and
`estimate` / `simulate` of zb-h1 and interleaved plan files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from polychip.cli import main
from polychip.plan import Plan, Replica, Stage, load_plan, save_plan
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[2]
CPU = str(ROOT / "examples" / "clusters" / "cpu-test.yaml")
PLAN = ["plan", CPU, "--model", "tiny", "--global-batch", "16", "--seq-len", "128"]


def _pipeline(schedule: str, v: int = 1) -> Plan:
    """Two stages of two layers on cpu-slow (node 0), four micro-batches."""
    stages = (Stage(0, 2, 0, (0,), "cpu-slow"), Stage(2, 4, 0, (1,), "cpu-slow"))
    job = TrainingJob(global_batch=4, seq_len=128)
    return Plan(load_cluster(CPU), load_model("tiny"), job, (Replica(stages, 4, 1),),
                schedule, v)  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "schedule", "v"), [
    ([], None, None),  # auto: the fastest the runtime runs
    (["--schedule", "1f1b"], "1f1b", 1),
    (["--schedule", "zb-h1"], "zb-h1", 1),
    (["--schedule", "interleaved-1f1b", "--virtual-stages", "2"], "interleaved-1f1b", 2),
])
def test_plan_schedule_option(tmp_path: Path, capsys, args, schedule, v) -> None:
    out = tmp_path / "plan.json"
    assert main([*PLAN, *args, "--out", str(out)]) == 0
    plan = load_plan(out)
    doc = json.loads(out.read_text())
    assert doc["estimate"]["schedule"] == plan.schedule
    if schedule is None:
        assert plan.schedule in {"1f1b", "interleaved-1f1b"}  # RUNTIME's, gpipe never
        assert any(n.startswith(f"schedule {plan.schedule}") for n in plan.notes)
    else:
        assert (plan.schedule, plan.virtual_stages) == (schedule, v)
    assert plan.schedule in capsys.readouterr().out


def test_virtual_stages_without_interleaving_exits_2(capsys) -> None:
    assert main([*PLAN, "--schedule", "zb-h1", "--virtual-stages", "2"]) == 2
    assert "--virtual-stages 2" in capsys.readouterr().err


@pytest.mark.parametrize(("schedule", "v"), [("zb-h1", 1), ("interleaved-1f1b", 2)])
def test_estimate_and_simulate_a_plan_file_of_each_schedule(tmp_path: Path, schedule, v) -> None:
    path, est, png = tmp_path / "p.json", tmp_path / "est.json", tmp_path / "step.png"
    plan = _pipeline(schedule, v)
    save_plan(plan, path)
    assert main(["estimate", str(path), "--simulate", "--json", str(est)]) == 0
    figures = json.loads(est.read_text())
    one = tmp_path / "one.json"
    save_plan(dataclasses.replace(plan, schedule="1f1b", virtual_stages=1), one)
    assert main(["estimate", str(one), "--json", str(tmp_path / "e1.json")]) == 0
    base = json.loads((tmp_path / "e1.json").read_text())
    assert figures["step_time_s"] != base["step_time_s"]  # its own schedule is priced
    assert figures["simulated"]["step_time_s"] > 0
    assert main(["simulate", str(path), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
