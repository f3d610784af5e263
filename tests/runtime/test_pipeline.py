"""Pipelines, tensor parallelism and hybrid plans from the schedule: exactly single-process
training, both schedules alike, activations held as the schedule says, a dying stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from polychip.plan import Plan
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks, run_with_a_dying_rank, train_command
from .plans import hybrid_plan, interleaved_plan, pp_plan
from .reference import CORPUS_BYTES, single_process

ATOL = 1e-12
STEPS = 3
# Micro-batches held at the peak: 1F1B holds min(S - i, M) on stage i, GPipe M.
PEAK = {"1f1b": [2, 1, 1, 1], "gpipe": [3, 3, 3, 2]}


def _simulated_peaks(plan: Plan) -> list[int]:
    """(micro-batch, chunk) pairs held at the peak, per rank, as the simulator counts them."""
    from polychip.simulator import simulate

    v = plan.virtual_stages
    by_stage = {(ri, st.stage): round(st.peak_in_flight * v)
                for st in simulate(plan, dedupe_replicas=False).stages for ri in st.replicas}
    return [by_stage[(r.replica, r.stage)] for r in plan.ranks()]


def _config(emulate: bool) -> TrainConfig:
    return TrainConfig(steps=STEPS, emulate=emulate, dilation=1.0 if emulate else None,
                       dtype="float64", optimizer="adamw", lr=0.05,
                       max_corpus_bytes=CORPUS_BYTES)


def _hybrid_worker(rank: int, world_size: int, plans: dict[str, Plan]) -> None:
    final: dict[str, dict[str, torch.Tensor]] = {}
    for kind, plan in plans.items():
        ref_losses, ref_params = single_process(plan, _config(False))
        emulate = kind != "gpipe"  # the emulated (time-stamped) wire format, and the plain one
        config = _config(emulate)
        trainer = Trainer(plan, config, build_topology(plan, rank, emulate=emulate,
                                                       timeout=config.timeout))
        if emulate:
            trainer.use_dilation(1.0)
        records = trainer.run(STEPS)
        trainer.grads.check_views()
        for r in records:  # the phases tile the step, measured; chip time when emulated
            assert r.seconds == pytest.approx(r.compute_s + r.pipeline_wait_s + r.grad_sync_s
                                              + r.optimizer_s + r.idle_s)
            assert (r.emulated_time is not None) == emulate and r.compute_s > 0
        role = trainer.role
        peak = PEAK[kind][rank] if kind in PEAK else _simulated_peaks(plan)[rank]
        assert [r.peak_activations for r in records] == [peak] * STEPS, kind
        if role.last_stage:
            for record, expected in zip(records, ref_losses, strict=True):
                assert record.global_loss == pytest.approx(expected, abs=ATOL), kind
        else:
            assert records[0].loss is None and records[0].global_loss is None
        final[kind] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        for name, p in final[kind].items():
            want = trainer.model.shard(name, ref_params[name])
            torch.testing.assert_close(p, want, rtol=0, atol=ATOL,
                                       msg=f"rank {rank} {name} ({kind})")
    for name, p in final["1f1b"].items():  # the two schedules compute the same thing
        torch.testing.assert_close(final["gpipe"][name], p, rtol=0, atol=1e-14, msg=name)


@pytest.mark.dist
def test_uneven_stages_tp_and_replicas_of_different_layouts_train_like_one_process(
        tmp_path: Path) -> None:
    """Replica 0: 1 + 3 layers, the 3 on two chips in TP; replica 1: 4 layers on one chip;
    uneven batches (6 + 2), two islands; 1F1B and GPipe. Then interleaved 1F1B with two model
    chunks per stage (:func:`interleaved_plan`)."""
    plans = {kind: hybrid_plan(kind) for kind in ("1f1b", "gpipe")}
    plans["interleaved"] = interleaved_plan()
    run_ranks(_hybrid_worker, 4, tmp_path, plans)


# ---- a stage that dies --------------------------------------------------------------------
def _pipeline_plan() -> Plan:
    """Replica 0 of the hybrid plan alone: 3 ranks, the last two a TP pair."""
    plan = hybrid_plan()
    return pp_plan(plan.cluster, [([(0, 1, 1, (0,), "cpu-slow"), (1, 4, 0, (0, 1), "cpu-fast")],
                                   6, 2)], model=plan.model)


@pytest.mark.dist
def test_a_stage_that_dies_stops_its_pipeline_with_a_clear_error(tmp_path: Path) -> None:
    config = dataclasses.replace(_config(False), steps=6, timeout_s=60)
    # rank 1 is the last stage's leader; 3 micro-batches: its forward call 3 is step 1's first
    outcomes = run_with_a_dying_rank(_pipeline_plan(), config, tmp_path, world_size=3,
                                     dying_rank=1, die_at_call=3)
    for rank, (elapsed, message) in outcomes.items():
        assert elapsed < 30
        assert f"rank {rank} " in message and "step 1" in message
        assert "another rank died" in message
    assert "RG0<r1 (receiving a gradient)" in outcomes[0][1]  # the first stage waited for it
    assert "tensor-parallel forward" in outcomes[2][1]  # its TP partner, inside the forward


# ---- the command ------------------------------------------------------------------------
@pytest.mark.dist
def test_train_command_runs_a_pipeline_and_reports_measured_beside_estimated(
        tmp_path: Path) -> None:
    plan = hybrid_plan()
    two_stages = pp_plan(plan.cluster, [([(0, 1, 1, (0,), "cpu-slow"), (1, 4, 0, (0,), "cpu-fast")],
                                         4, 2)], model=plan.model)
    out, records = train_command(two_stages, tmp_path)
    assert "step time, seconds" in out and "analytic estimate" in out and "simulated" in out
    assert "per stage" in out and "EMULATED" in out
    assert [(r["step"], r["rank"], r["stage"]) for r in records] == [
        (0, 0, 0), (0, 1, 1), (1, 0, 0), (1, 1, 1)]
    first, last = records[2], records[3]
    assert first["loss"] is None and last["loss"] > 0  # the slot sums in fp32, loss in double:
    assert last["global_loss"] == pytest.approx(last["loss"], rel=1e-6)
    assert (first["layers"], last["layers"]) == ([[0, 1]], [[1, 4]])
    assert (first["peak_activations"], last["peak_activations"]) == (2, 1)
    for r in (first, last):
        assert r["compute_s"] > 0 and r["pipeline_wait_s"] > 0 and r["grad_sync_s"] == 0
        assert r["seconds"] == pytest.approx(r["compute_s"] + r["pipeline_wait_s"]
                                             + r["optimizer_s"] + r["idle_s"])
