"""A chip slower than planned, with real processes: one emulated chip is made 3x slower from
step 2 (``POLYCHIP_SLOW_RANK``); the watch finds it within its window, the ranks stop at a step
boundary and save, the re-calibrated plan gives that chip less of the batch, the run resumes
under it and finishes -- and the model it ends with is exactly the single-process
reference's (float64)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from tests.runtime.plans import cpu_test_cluster, dp_plan
from tests.runtime.reference import CORPUS_BYTES, single_process

from polychip.elastic.slowchip import (
    SlowChipMonitor,
    follow_injected_slowdown,
    replan_for_slow_chip,
)
from polychip.runtime.checkpoint import _ShardReader
from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest
from polychip.runtime.launch import launch_local
from polychip.runtime.metrics import read_metrics
from polychip.runtime.session import SLOW_ENV, TrainTask
from polychip.runtime.train_config import TrainConfig

STEPS, SLOW_FROM, WINDOW = 10, 2, 3


@pytest.mark.dist
def test_a_slow_chip_is_found_replanned_around_and_the_run_ends_exact(tmp_path: Path,
                                                                     monkeypatch) -> None:
    # what the planner chooses for this job on cpu-test: cpu-fast (rank 0) and cpu-mid
    plan = dp_plan(cpu_test_cluster(), [(1, 0, "cpu-fast", 22, 2), (2, 0, "cpu-mid", 10, 2)],
                   seq_len=64)
    ckpt, metrics, stop = tmp_path / "ckpt", tmp_path / "metrics.jsonl", tmp_path / "stop"
    config = TrainConfig(steps=STEPS, emulate=True, dtype="float64", lr=0.05,
                         max_corpus_bytes=CORPUS_BYTES, checkpoint_dir=str(ckpt),
                         metrics_path=str(metrics))
    monkeypatch.setenv(SLOW_ENV, f"0:3:{SLOW_FROM}")
    said: list[str] = []
    monitor = SlowChipMonitor(stop, metrics, window=WINDOW, poll_s=0.05, say=said.append)
    with monitor.during(plan):
        launch_local(plan, TrainTask(config), stop_file=stop)

    found = monitor.found
    assert found is not None and monitor.found_at is not None
    assert (found.rank, found.chip, found.basis) == (0, "cpu-fast", "emulated")
    assert found.first_step == SLOW_FROM and found.step == SLOW_FROM + WINDOW - 1
    assert found.ratio == pytest.approx(3.0, rel=0.1)
    assert len(said) == 1 and "slow chip: rank 0 (cpu-fast" in said[0]
    folder = latest_complete(ckpt)
    assert folder is not None
    saved = read_manifest(folder).step  # the ranks stopped at a step boundary and saved
    assert found.step < saved < STEPS

    new, pset, event = replan_for_slow_chip(plan, metrics, found, detected_at=monitor.found_at,
                                            since_step=0, resumed_step=saved)
    share = {r.stages[0].chip: r.batch_size for r in new.replicas}
    assert share["cpu-fast"] < 22  # the slow chip gets less of the batch
    assert event.compute_corrections["cpu-fast"] == pytest.approx(3.0, rel=0.1)
    assert event.new_tokens_per_s > event.old_recalibrated_tokens_per_s
    assert "slow chip (rank 0, cpu-fast" in event.line()

    follow_injected_slowdown(plan, new)  # the chip stays slow under the new plan
    fast = next(r.rank for r in new.ranks() if r.chip == "cpu-fast")
    assert os.environ[SLOW_ENV] == f"{fast}:3:0"
    again = SlowChipMonitor(stop, metrics, window=WINDOW, poll_s=0.05, say=said.append)
    with again.during(new, pset):
        summary = launch_local(new, TrainTask(dataclasses.replace(config, resume=True)),
                               stop_file=stop)[0]
    assert again.found is None  # as slow as the re-calibrated plan expects
    assert summary is not None and summary.steps == STEPS - saved

    # every step once, under the plan that computed it
    records = read_metrics(metrics)
    ranks = {s: sorted(r["rank"] for r in records if r["step"] == s) for s in range(STEPS)}
    assert all(ranks[s] == [0, 1] for s in range(saved))
    assert all(ranks[s] == list(range(new.world_size)) for s in range(saved, STEPS))
    folder = latest_complete(ckpt)
    assert folder is not None and read_manifest(folder).step == STEPS
    reader = _ShardReader(folder, read_manifest(folder))
    _, ref = single_process(plan, config)
    for name, want in ref.items():
        torch.testing.assert_close(reader.full(name, "param"), want, rtol=0, atol=1e-12,
                                   msg=name)
