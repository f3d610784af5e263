"""A chip slower than planned, with real processes: one emulated chip is made 3x slower from
step 2 (``POLYCHIP_SLOW_RANK``); the watch finds it within its window, the ranks stop at a step
boundary and save, the re-calibrated plan gives that chip less of the batch, the run resumes
under it and finishes -- and the model it ends with is exactly the single-process
reference's (float64)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.runtime.plans import cpu_test_cluster, dp_plan
from tests.runtime.reference import CORPUS_BYTES, assert_saved_model_is_the_reference

from polychip.elastic.events import EVENTS
from polychip.elastic.slowchip import SlowReplan
from polychip.elastic.supervisor import METRICS, run_elastic
from polychip.runtime.faults import SLOW_ENV
from polychip.runtime.metrics import read_metrics
from polychip.runtime.train_config import TrainConfig
from polychip.spec.errors import PolychipError

STEPS, SLOW_FROM, WINDOW = 10, 2, 3


@pytest.mark.dist
def test_a_slow_chip_is_found_replanned_around_and_the_run_ends_exact(tmp_path: Path,
                                                                     monkeypatch) -> None:
    # what the planner chooses for this job on cpu-test: cpu-fast (rank 0) and cpu-mid
    plan = dp_plan(cpu_test_cluster(), [(1, 0, "cpu-fast", 22, 2), (2, 0, "cpu-mid", 10, 2)],
                   seq_len=64)
    ckpt = tmp_path / "ckpt"
    config = TrainConfig(steps=STEPS, emulate=True, dtype="float64", lr=0.05,
                         max_corpus_bytes=CORPUS_BYTES, checkpoint_dir=str(ckpt))
    monkeypatch.setenv(SLOW_ENV, f"0:3:{SLOW_FROM}")
    said: list[str] = []
    done = run_elastic(plan, config, say=said.append, poll_s=0.05, slow_window=WINDOW)

    (event,) = done.replans  # found once: the new plan expects the chip as slow as it is
    assert isinstance(event, SlowReplan)
    assert (event.slow_rank, event.slow_chip, event.basis) == (0, "cpu-fast", "emulated")
    assert event.window_steps == (SLOW_FROM, SLOW_FROM + WINDOW - 1)  # found at once
    assert event.ratio == pytest.approx(3.0, rel=0.1)
    assert event.compute_corrections["cpu-fast"] == pytest.approx(3.0, rel=0.1)
    assert event.compute_corrections["cpu-mid"] == pytest.approx(1.0, rel=0.1)
    # the ranks stopped at a step boundary after it was found, and saved
    assert SLOW_FROM + WINDOW - 1 < event.resumed_step < STEPS
    assert event.new_tokens_per_s > event.old_recalibrated_tokens_per_s
    assert event.old_recalibrated_tokens_per_s < event.old_tokens_per_s
    assert [x for x in said if "slow chip" in x] == [said[0], said[1]]
    assert "slow chip: rank 0 (cpu-fast" in said[0] and event.line() == said[1]
    logged = [json.loads(x) for x in (ckpt / EVENTS).read_text().splitlines()]
    assert [e["reason"] for e in logged] == ["slow chip"]

    new = done.plan  # the slow chip gets less of the work (sequences x layers per step)
    work = sum(r.batch_size * st.num_layers
               for r in new.replicas for st in r.stages if st.chip == "cpu-fast")
    assert work < 22 * plan.model.num_layers
    # the chip stays slow under the new plan (or, left out of it, slows nothing)
    fast = [r.rank for r in new.ranks() if r.chip == "cpu-fast"]
    assert os.environ.get(SLOW_ENV) == (f"{fast[0]}:3:0" if fast else None)
    assert done.summary is not None and done.summary.steps == STEPS - event.resumed_step

    # every step once, under the plan that computed it (metrics kept in the checkpoint dir)
    records = read_metrics(ckpt / METRICS)
    ranks = {s: sorted(r["rank"] for r in records if r["step"] == s) for s in range(STEPS)}
    assert all(ranks[s] == [0, 1] for s in range(event.resumed_step))
    assert all(ranks[s] == list(range(new.world_size))
               for s in range(event.resumed_step, STEPS))
    assert_saved_model_is_the_reference(ckpt, plan, config, STEPS)


def test_bad_slow_chip_settings_fail_before_any_rank_starts(tmp_path: Path) -> None:
    plan = dp_plan(cpu_test_cluster(), [(1, 0, "cpu-fast", 4, 2)])
    config = TrainConfig(steps=2, emulate=True, checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(PolychipError, match=r"threshold 0\.9"):
        run_elastic(plan, config, slow_threshold=0.9, say=lambda _: None)
    assert not (tmp_path / "ckpt").exists()  # nothing ran
