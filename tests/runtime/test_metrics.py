"""The run's summary from step records: a step lasts what its slowest rank's lasts; emulated
runs are summarised in emulated chip time beside the measured wall time; phase means add up."""

from __future__ import annotations

import json

import pytest

from polychip.runtime.clock import Phase, PhaseSeconds
from polychip.runtime.metrics import METRICS_VERSION, StepRecord, summarise


def _record(step: int, rank: int, wall: PhaseSeconds, chip: PhaseSeconds | None,
            tokens: int) -> StepRecord:
    return StepRecord(
        step=step, rank=rank, replica=rank, stage=0, tp_rank=0, chip="c", island="i",
        layers=((0, 2),), loss=1.0, global_loss=2.0 - step / 10, samples=tokens // 8,
        tokens=tokens, seconds=wall.seconds, compute_s=wall.compute_s,
        pipeline_wait_s=wall.pipeline_wait_s, grad_sync_s=wall.grad_sync_s,
        optimizer_s=wall.optimizer_s, idle_s=wall.idle_s, peak_activations=1,
        peak_memory_bytes=1000 + rank, memory_kind="cpu-tensors", memory=None,
        emulated=chip is not None, dilation=None if chip is None else 10.0,
        emulated_time=chip, padding_s=0.0, overruns=rank, lost_s=0.0)


def _phases(compute: float, sync: float, idle: float, opt: float = 0.1) -> PhaseSeconds:
    return PhaseSeconds.of(compute + sync + idle + opt,
                           {Phase.COMPUTE: compute, Phase.GRAD_SYNC: sync, Phase.OPTIMIZER: opt})


def test_an_emulated_run_is_timed_by_its_slowest_rank_in_chip_time() -> None:
    records = []
    for step in range(3):
        # rank 0: the slow chip (its compute is most of its step); rank 1 waits in the sync
        records.append(_record(step, 0, _phases(9.0, 0.5, 0.4), _phases(0.9, 0.05, 0.04),
                               tokens=64))
        records.append(_record(step, 1, _phases(4.5, 5.0, 0.4), _phases(0.45, 0.5, 0.03),
                               tokens=64))
    s = summarise(records, num_phases_per_step=[3, 3], estimate_tokens_per_s=100.0)
    assert s.time_basis == "emulated" and s.emulated and s.dilation == 10.0
    chip_step = 0.9 + 0.05 + 0.04 + 0.1  # rank 0's: the largest
    assert s.step_time_s == pytest.approx(chip_step)
    assert s.tokens_per_s == pytest.approx(128 / chip_step)
    assert s.wall_step_time_s == pytest.approx(10.0)
    fast = s.stages[1]
    assert fast.measured.seconds == pytest.approx(10.0)
    assert fast.timed.grad_sync_s == pytest.approx(0.5)
    assert fast.timed.seconds == pytest.approx(fast.timed.compute_s + fast.timed.grad_sync_s
                                               + fast.timed.optimizer_s + fast.timed.idle_s)
    # the ideal: each replica alone, its compute and optimizer in chip time
    assert s.ideal_tokens_per_s == pytest.approx(64 / 1.0 + 64 / 0.55)
    assert s.losses == (2.0, 1.9, 1.8) and s.num_overruns == 3 and s.num_phases == 18
    out = s.to_dict()
    assert out["time_basis"] == "emulated" and json.dumps(out)


def test_a_measured_run_is_summarised_in_wall_time_and_records_are_json() -> None:
    records = [_record(step, 0, _phases(1.0, 0.0, 0.2), None, tokens=64) for step in range(2)]
    s = summarise(records, num_phases_per_step=[3], estimate_tokens_per_s=None)
    assert s.time_basis == "measured" and s.step_time_s == s.wall_step_time_s == 1.3
    line = json.loads(records[0].to_json())
    assert line["version"] == METRICS_VERSION == 3 and line["emulated_time"] is None
    assert line["seconds"] == pytest.approx(sum(line[k] for k in (
        "compute_s", "pipeline_wait_s", "grad_sync_s", "optimizer_s", "idle_s")))
