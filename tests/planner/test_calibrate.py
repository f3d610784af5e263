"""`polychip calibrate` on synthetic runs: metrics written as the cost model with known
corrections would measure them. Calibrating against the same profile without corrections
recovers them (each the ratio measured / estimated of its phase), and the written profile,
passed back with --profile, makes the estimate equal the run. A run that does not match the
plan, or whose chips were emulated, is refused with exit 2."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tests.spec.profile_data import tiny_profile, write

from polychip.cli import main
from polychip.costmodel import CostModel, ProfileSet
from polychip.plan import Plan, Replica, Stage, save_plan, validate_plan
from polychip.planner.calibrate import estimated_stages
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model
from polychip.spec.profile import Corrections
from polychip.spec.profile_file import load_profile

TINY = load_model("tiny")
JOB = TrainingJob(global_batch=8, seq_len=128)  # bf16, as the hand-written profile
CLUSTER = cluster_from_dict({"name": "fast", "nodes": [
    {"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10}]})
TRUTH = Corrections(compute=1.3, p2p=1.5, grad_sync=2.0, optimizer=1.7)


def _plan(kind: str) -> Plan:
    if kind == "pipeline":
        stages = (Stage(0, 2, 0, (0,), "cpu-fast"), Stage(2, 4, 0, (1,), "cpu-fast"))
        replicas = (Replica(stages, 8, 4),)
    else:
        replicas = tuple(Replica((Stage(0, 4, 0, (s,), "cpu-fast"),), 4, 4) for s in (0, 1))
    plan = Plan(CLUSTER, TINY, JOB, replicas)
    validate_plan(plan)
    return plan


def _record(step: int, rank: int, stage, **kw) -> dict:
    return {"version": 3, "step": step, "rank": rank, "replica": stage.replica,
            "stage": stage.stage, "tp_rank": 0, "chip": stage.chip, "island": "x",
            "layers": kw.pop("layers"), "seconds": sum(stage.phases.values()),
            **stage.phases, "peak_memory_bytes": stage.peak_memory_bytes,
            "memory_kind": "cpu-tensors", "emulated": False, **kw}


def _synthetic_run(tmp_path: Path, plan: Plan, steps: int = 3, **kw) -> Path:
    """The metrics the cost model with the TRUTH corrections says this run measures."""
    data = tiny_profile()
    data["corrections"] = vars(TRUTH).copy()
    truth = ProfileSet([load_profile(write(tmp_path, data, "truth.json"))])
    cm = CostModel(plan.cluster, plan.model, plan.job, truth)
    cost = cm.evaluate(plan.replicas, plan.schedule)
    rows = estimated_stages(plan, cm, cost, "cpu-tensors")
    path = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(steps):
        for info, row in zip(plan.ranks(), rows, strict=True):
            st = plan.replicas[info.replica].stages[info.stage]
            rec = _record(step, info.rank, row, layers=[[st.layer_start, st.layer_end]], **kw)
            lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def _calibrate(tmp_path: Path, plan: Plan, metrics: Path, *extra: str) -> int:
    plan_path = tmp_path / "plan.json"
    save_plan(plan, plan_path)
    base = write(tmp_path, tiny_profile(), "base.json")
    return main(["calibrate", str(metrics), str(plan_path), "--profile", str(base),
                 "--out", str(tmp_path / "cal.json"), *extra])


@pytest.mark.parametrize(("kind", "fitted"), [("pipeline", ("compute", "optimizer", "p2p")),
                                              ("data-parallel", ("compute", "optimizer",
                                                                 "grad_sync"))])
def test_corrections_are_the_ratios_and_bring_the_estimate_to_the_run(
        tmp_path: Path, kind: str, fitted: tuple[str, ...]) -> None:
    plan = _plan(kind)
    metrics = _synthetic_run(tmp_path, plan)
    assert _calibrate(tmp_path, plan, metrics, "--json", str(tmp_path / "cmp.json")) == 0
    written = load_profile(tmp_path / "cal.json")
    for phase in ("compute", "optimizer", "p2p", "grad_sync"):  # untouched phases stay 1
        want = getattr(TRUTH, phase) if phase in fitted else 1.0
        assert getattr(written.corrections, phase) == pytest.approx(want, rel=1e-9), phase
    assert written.blocks == load_profile(tmp_path / "base.json").blocks  # the points kept
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert cmp["estimated_step_s"] < cmp["measured_step_s"]  # the corrections are all > 1
    # passed back with --profile, the estimate is the run
    out = tmp_path / "est.json"
    assert main(["estimate", str(tmp_path / "plan.json"), "--profile",
                 str(tmp_path / "cal.json"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["step_time_s"] == pytest.approx(
        cmp["measured_step_s"], rel=1e-9)
    assert cmp["calibrated_step_s"] == pytest.approx(cmp["measured_step_s"], rel=1e-9)


def test_without_profiles_it_writes_a_corrections_only_profile(tmp_path: Path) -> None:
    plan = _plan("data-parallel")
    metrics = _synthetic_run(tmp_path, plan)
    save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "only.json"
    assert main(["calibrate", str(metrics), str(tmp_path / "plan.json"), "--out",
                 str(out)]) == 0
    p = load_profile(out)  # valid as it stands: no points, the job's shape, the corrections
    assert (p.chip, p.precision, p.blocks, p.optimizer_s_per_param) == (
        "cpu-fast", "bf16", (), None)
    assert p.corrections.compute > 1.0 and p.corrections.grad_sync > 1.0
    cm = CostModel(CLUSTER, TINY, JOB, ProfileSet.for_job([p], CLUSTER, TINY, JOB))
    analytic = CostModel(CLUSTER, TINY, JOB)
    fast = cm.chip("cpu-fast")
    got, plain = (m.stage_times(fast, 4, 1, 4, True, True, False) for m in (cm, analytic))
    assert got.fwd_s == pytest.approx(p.corrections.compute * plain.fwd_s)


def _edit(path: Path, rank: int, **changes) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in lines:
        if rec["rank"] == rank:
            rec.update(changes)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.mark.parametrize(("change", "named"), [
    ({"chip": "cpu-slow"}, "rank 1 ran chip 'cpu-slow', the plan gives it 'cpu-fast'"),
    ({"layers": [[0, 3]]}, "rank 1 ran layers [0, 3), the plan gives it [2, 4)"),
    ({"stage": 0}, "rank 1 ran stage 0, the plan gives it 1"),
])
def test_a_run_of_another_plan_is_refused_naming_what_differs(
        tmp_path: Path, capsys, change: dict, named: str) -> None:
    plan = _plan("pipeline")
    metrics = _synthetic_run(tmp_path, plan)
    _edit(metrics, 1, **change)
    assert _calibrate(tmp_path, plan, metrics) == 2
    err = capsys.readouterr().err
    assert named in err and "give the plan this run trained" in err and err.count("\n") == 1


def test_a_run_with_other_ranks_or_format_is_refused(tmp_path: Path, capsys) -> None:
    metrics = _synthetic_run(tmp_path, _plan("pipeline"))
    assert _calibrate(tmp_path, _plan("data-parallel"), metrics) == 2  # 2 stages, not replicas
    assert "rank 0 ran layers [0, 2), the plan gives it [0, 4)" in capsys.readouterr().err
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:1]) + "\n")  # one rank of two
    assert _calibrate(tmp_path, _plan("pipeline"), metrics) == 2
    assert "the run has 1 rank(s), the plan 2" in capsys.readouterr().err
    metrics.write_text(json.dumps({**json.loads(lines[0]), "version": 2}) + "\n")
    assert _calibrate(tmp_path, _plan("pipeline"), metrics) == 2
    assert "line 1.version: metrics format version 2" in capsys.readouterr().err


def test_an_emulated_run_is_refused(tmp_path: Path, capsys) -> None:
    plan = _plan("pipeline")
    metrics = _synthetic_run(tmp_path, plan, emulated=True)
    assert _calibrate(tmp_path, plan, metrics) == 2
    err = capsys.readouterr().err
    assert "emulated" in err and "calibrate a real run" in err and err.count("\n") == 1


def test_skipping_every_step_is_refused(tmp_path: Path, capsys) -> None:
    plan = _plan("pipeline")
    metrics = _synthetic_run(tmp_path, plan, steps=2)
    assert _calibrate(tmp_path, plan, metrics, "--skip", "2") == 2
    assert "--skip 2: the run has 2 step(s)" in capsys.readouterr().err


def test_several_chip_types_need_a_chip_pattern(tmp_path: Path, capsys) -> None:
    plan = _plan("pipeline")
    two = cluster_from_dict({"name": "two", "nodes": [
        {"chip": "cpu-fast", "count": 1, "chips_per_node": 1, "nic_gbps": 10},
        {"chip": "cpu-slow", "count": 1, "chips_per_node": 1, "nic_gbps": 10}]})
    rep = plan.replicas[0]
    mixed = replace(plan, cluster=two, replicas=(replace(rep, stages=(
        rep.stages[0], replace(rep.stages[1], node=1, local_devices=(0,), chip="cpu-slow"))),))
    save_plan(mixed, tmp_path / "plan.json")
    metrics = _synthetic_run(tmp_path, plan)
    _edit(metrics, 1, chip="cpu-slow")
    assert main(["calibrate", str(metrics), str(tmp_path / "plan.json"), "--out",
                 str(tmp_path / "c.json")]) == 2
    assert "put {chip} in the name" in capsys.readouterr().err
    assert main(["calibrate", str(metrics), str(tmp_path / "plan.json"), "--out",
                 str(tmp_path / "c-{chip}.json")]) == 0
    assert {load_profile(tmp_path / f"c-{c}.json").chip for c in ("cpu-fast", "cpu-slow")} == {
        "cpu-fast", "cpu-slow"}
