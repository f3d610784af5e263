"""The slow-chip watch and the re-calibrated plan on synthetic step records (no processes):
a rank whose compute stays over the threshold for a window of steps is found, a short
slowdown or warm-up is not; the plan made with the run's corrections gives the slow chip
less work, and is not found slow again under its own estimate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.runtime.plans import cpu_test_cluster, dp_plan

from polychip.costmodel import ComputeProfile, CostModel
from polychip.elastic.recalibrate import recalibrated_plan, timed_records
from polychip.elastic.slowdown import SlowChipWatch
from polychip.plan.plan import Plan
from polychip.planner.calibrate import estimated_stages
from polychip.spec.errors import PolychipError, SpecError


def _plan() -> Plan:
    """cpu-fast (rank 0, 22 samples) and cpu-mid (rank 1, 10) in data parallel: what the
    planner chooses for this job on cpu-test."""
    return dp_plan(cpu_test_cluster(), [(1, 0, "cpu-fast", 22, 2), (2, 0, "cpu-mid", 10, 2)],
                   seq_len=64)


def _records(plan: Plan, steps: range, slow: dict[int, float] | None = None, *,
             profile: ComputeProfile | None = None, emulated: bool = True
             ) -> list[dict[str, Any]]:
    """Step records as the runtime writes them, every phase at the estimate's value except
    each ``slow`` rank's compute (x its factor)."""
    cm = CostModel(plan.cluster, plan.model, plan.job, profile)
    cost = cm.evaluate(plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages)
    est = {(s.replica, s.stage): s.phases
           for s in estimated_stages(plan, cm, cost, "cpu-tensors")}
    out = []
    for step in steps:
        for info in plan.ranks():
            phases = dict(est[(info.replica, info.stage)])
            phases["compute_s"] *= (slow or {}).get(info.rank, 1.0)
            timed = {"seconds": sum(phases.values()), **phases}
            rep = plan.replicas[info.replica]
            st = rep.stages[info.stage]
            out.append({
                "version": 3, "step": step, "rank": info.rank, "replica": info.replica,
                "stage": info.stage, "tp_rank": info.tp_rank, "chip": info.chip,
                "layers": [[st.layer_start, st.layer_end]], "peak_memory_bytes": 1 << 20,
                "memory_kind": "cpu-tensors", "emulated": emulated,
                "emulated_time": timed if emulated else None,
                **({k: 7 * v for k, v in timed.items()} if emulated else timed)})
    return out


def _watch(records: list[dict[str, Any]], watch: SlowChipWatch) -> list[tuple[int, int]]:
    return [(hit.rank, hit.step) for r in records if (hit := watch.observe(r)) is not None]


def test_a_chip_slow_for_a_window_of_steps_is_found_once_the_window_is_full() -> None:
    plan = _plan()
    before, after = _records(plan, range(2)), _records(plan, range(2, 10), {0: 3.0})
    watch = SlowChipWatch(plan, "unused.jsonl", window=5)
    hits = [h for r in before + after if (h := watch.observe(r)) is not None]
    assert [(h.rank, h.step) for h in hits] == [(0, 6), (0, 7), (0, 8), (0, 9)]
    first = hits[0]  # steps 2-6: the first full window; the healthy chip never
    assert (first.chip, first.replica, first.stage, first.node, first.basis) == (
        "cpu-fast", 0, 0, 1, "emulated")
    assert first.first_step == 2 and first.ratio == pytest.approx(3.0)
    assert first.estimated_s > 0 and first.measured_s == pytest.approx(3 * first.estimated_s)
    assert "rank 0 (cpu-fast, node 1" in first.line() and "3.00x" in first.line()


def test_warm_up_a_short_slowdown_and_a_ratio_under_the_threshold_are_not_slow() -> None:
    plan = _plan()
    slow = [r for r in _records(plan, range(12), {0: 3.0}) if r["rank"] == 0]
    normal = [r for r in _records(plan, range(12)) if r["rank"] == 0]
    # the first step is warm-up: slow from step 0 with a window of 2 is found at step 2
    assert _watch(slow[:3], SlowChipWatch(plan, "x", window=2)) == [(0, 2)]
    # slow at 1-3, on time at 4, slow again from 5: a window of 4 fills at step 8 only
    mixed = [normal[s] if s == 4 else slow[s] for s in range(12)]
    assert _watch(mixed, SlowChipWatch(plan, "x", window=4))[0] == (0, 8)
    # an emulated step whose compute overran its slots is the host's time: passed over
    overran = [dict(r, compute_overruns=1) if s in (2, 3) else r for s, r in enumerate(slow)]
    assert _watch(overran, SlowChipWatch(plan, "x", window=3))[0] == (0, 5)
    hosts = [dict(r, compute_overruns=2) for r in slow]
    assert _watch(hosts, SlowChipWatch(plan, "x", window=3)) == []
    # 1.2 x the estimate stays under the default threshold (1.25)
    assert _watch(_records(plan, range(12), {0: 1.2}), SlowChipWatch(plan, "x")) == []


def test_measured_runs_are_held_by_their_measured_compute() -> None:
    plan = _plan()
    watch = SlowChipWatch(plan, "x", window=3, threshold=1.5)
    hits = [h for r in _records(plan, range(5), {1: 2.0}, emulated=False)
            if (h := watch.observe(r)) is not None]
    hit = hits[0]
    assert (hit.rank, hit.step, hit.basis) == (1, 3, "measured")
    assert hit.ratio == pytest.approx(2.0)


def test_poll_reads_only_the_lines_added_since_the_last_one(tmp_path: Path) -> None:
    plan, metrics = _plan(), tmp_path / "m.jsonl"
    watch = SlowChipWatch(plan, metrics, window=3)
    lines = {rank: [json.dumps(r) + "\n" for r in _records(plan, range(8), {0: 3.0})
                    if r["rank"] == rank] for rank in (0, 1)}
    assert watch.poll() is None  # no logs yet
    logs = {rank: Path(f"{metrics}.rank{rank}") for rank in (0, 1)}
    for rank, path in logs.items():
        path.write_text("".join(lines[rank][:3]))
    assert watch.poll() is None  # steps 1 and 2 slow after the warm-up: not yet 3
    with logs[0].open("a") as f:
        f.write(lines[0][3][:20])  # a line half written waits for the next poll
    assert watch.poll() is None
    with logs[0].open("a") as f:
        f.write(lines[0][3][20:])
    found = watch.poll()
    assert found is not None and (found.rank, found.first_step, found.step) == (0, 1, 3)
    assert watch.poll() is found  # the first one found stays the answer


def test_bad_settings_and_records_of_another_plan_are_refused() -> None:
    plan = _plan()
    with pytest.raises(PolychipError, match=r"threshold 1\.0"):
        SlowChipWatch(plan, "x", threshold=1.0)
    with pytest.raises(PolychipError, match="window 0"):
        SlowChipWatch(plan, "x", window=0)
    with pytest.raises(PolychipError, match="rank 5"):
        SlowChipWatch(plan, "x").observe({"rank": 5, "step": 0})


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_recalibrated_plan_gives_the_slow_chip_less_and_is_not_slow_again(
        tmp_path: Path) -> None:
    plan, metrics = _plan(), tmp_path / "m.jsonl"
    earlier = _records(cpu_test_plan4(), range(3))  # another plan's steps, before this one's
    _write(metrics, earlier + _records(plan, range(3, 9), {0: 3.0}))
    with pytest.raises(SpecError, match="rank"):  # the other plan's records are refused ...
        recalibrated_plan(plan, metrics)
    new, pset = recalibrated_plan(plan, metrics, since_step=3)  # ... and left out here
    assert pset.corrections("cpu-fast").compute == pytest.approx(3.0, rel=1e-6)
    assert pset.corrections("cpu-mid").compute == pytest.approx(1.0, rel=1e-6)
    assert pset.corrections("cpu-fast").grad_sync == 1.0  # emulated: compute only
    share = {r.stages[0].chip: r.batch_size for r in new.replicas}
    assert share["cpu-fast"] < 22

    # the chip is still 3x slower than the uncorrected cost model: under the new plan's own
    # (corrected) estimate it is on time, so the watch does not find it again
    slow_rank = next(i.rank for i in new.ranks() if i.chip == "cpu-fast")
    watch = SlowChipWatch(new, "x", window=3, profile=pset)
    assert _watch(_records(new, range(8), {slow_rank: 3.0}), watch) == []
    unaware = SlowChipWatch(new, "x", window=3)  # without the profile it would be
    assert _watch(_records(new, range(8), {slow_rank: 3.0}), unaware)[0] == (slow_rank, 3)


def test_timed_records_need_a_step_of_the_plan(tmp_path: Path) -> None:
    metrics = tmp_path / "m.jsonl"
    _write(metrics, _records(_plan(), range(3)))
    assert {r.step for r in timed_records(metrics, since_step=1)} == {1, 2}
    with pytest.raises(SpecError, match="no records of step 3"):
        timed_records(metrics, since_step=3)


def cpu_test_plan4() -> Plan:
    from tests.runtime.plans import cpu_test_plan

    return cpu_test_plan(shares=(4, 4, 16, 8), seq_len=64)
