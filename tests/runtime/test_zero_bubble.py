"""The zero-bubble schedule (zb-h1) executed: B (the input gradient) and W (the weight
gradients) apart train exactly like one process -- pipelines of 2 and 3 stages with fewer and
more micro-batches than stages, a TP pair with and without sequence and vocabulary
parallelism, replicas of different shapes, recompute, ZeRO-1 and the overlapped gradient
sync -- and like 1F1B under fp16 loss scaling; an emulated W lasts the cost model's
weight-gradient time, counted as compute."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from unittest import mock

import pytest
import torch

from polychip.costmodel.estimate import CostModel
from polychip.plan import Plan
from polychip.plan.schedule import Op, zb_h1_order
from polychip.runtime.emulate import PhaseTargets
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import TINY4, hybrid_plan, pp_plan, with_job
from .reference import CORPUS_BYTES, single_process

ATOL = 1e-12
STEPS = 3
WGRAD = 0.6  # the emulated W: this fraction of the cost model's backward


def _three_stages(share: int, micro: int) -> Plan:
    """Layers 1 | 2 | 1 on a slow chip, a fast TP pair, a slow chip: ranks 0, 1 + 2, 3."""
    c = hybrid_plan().cluster
    return pp_plan(c, [([(0, 1, 1, (0,), "cpu-slow"), (1, 3, 0, (0, 1), "cpu-fast"),
                         (3, 4, 1, (1,), "cpu-slow")], share, micro)],
                   model=TINY4, schedule="zb-h1")


def _recompute_zero1(plan: Plan) -> Plan:
    reps = tuple(dataclasses.replace(r, stages=tuple(
        dataclasses.replace(st, recompute=True) for st in r.stages)) for r in plan.replicas)
    return dataclasses.replace(plan, replicas=reps, zero1=True)


def exact_plans() -> dict[str, Plan]:
    """hybrid_plan: replica 0 of 2 stages (1 layer on a slow chip; 3 and the head on a fast TP
    pair), 3 micro-batches; replica 1 all layers on one slow chip, 2 micro-batches."""
    zb = hybrid_plan("zb-h1")
    return {
        "2 stages + a 1-stage replica, SP and VP, emulated": zb,
        "2 stages + a 1-stage replica, no SP, no VP": with_job(
            zb, sequence_parallel=False, vocab_parallel=False),
        "3 stages, 2 micro-batches": _three_stages(2, 1),
        "3 stages, 4 micro-batches, SP, no VP": with_job(
            _three_stages(8, 2), vocab_parallel=False),
        "recompute, ZeRO-1, overlapped sync": _recompute_zero1(zb),
    }


def _zb_peak(plan: Plan, replica: int, stage: int) -> int:
    """Micro-batches held between F and W at the peak, from the schedule's order."""
    rep, held, peak = plan.replicas[replica], 0, 0
    for op, _ in zb_h1_order(stage, rep.num_stages, rep.num_micro_batches):
        held += {Op.FORWARD: 1, Op.WEIGHT: -1}.get(op, 0)
        peak = max(peak, held)
    return peak


def _with_wgrad(cost: CostModel, replica, si, schedule="1f1b"):  # type: ignore[no-untyped-def]
    times = _TIMES_OF(cost, replica, si, schedule)
    return dataclasses.replace(times, wgrad_s=WGRAD * times.bwd_s)


_TIMES_OF = CostModel.times_of


def _train(plan: Plan, rank: int, config: TrainConfig, emulate: bool) -> tuple[Trainer, list]:
    config = dataclasses.replace(config, emulate=emulate)
    with mock.patch.object(CostModel, "times_of", _with_wgrad):
        trainer = Trainer(plan, config, build_topology(plan, rank, emulate=emulate,
                                                       timeout=config.timeout))
    if emulate:
        trainer.use_dilation(1.0)
    records = trainer.run(config.steps)
    trainer.grads.check_views()
    trainer.grads.close()
    return trainer, records


def _check_weight_slots(trainer: Trainer, records: list) -> None:
    """W's slot is the cost model's wgrad_s, B's the rest of the backward; both are compute."""
    targets, role = trainer.targets, trainer.role
    assert isinstance(targets, PhaseTargets)
    (forward, backward), = targets.chunk_s
    assert targets.wgrad_s == (pytest.approx(WGRAD * backward),)
    slots, calls = trainer.clock.slots.summary(), STEPS * role.num_micro_batches
    weight = slots.phase("weight")
    assert weight.num_calls == calls
    assert weight.slot_s == pytest.approx(calls * WGRAD * backward)
    assert slots.phase("backward").slot_s == pytest.approx(calls * (1 - WGRAD) * backward)
    for r in records:  # the slots lie in the compute phase, however late they ran
        assert r.emulated_time.compute_s >= role.num_micro_batches * (forward + backward) * 0.999


def _exact_worker(rank: int, world_size: int, plans: dict[str, Plan], refs: dict) -> None:
    config = TrainConfig(steps=STEPS, dtype="float64", optimizer="adamw", lr=0.05,
                         max_corpus_bytes=CORPUS_BYTES, bucket_bytes=2048)
    for name, plan in plans.items():
        emulate = "emulated" in name
        trainer, records = _train(plan, rank, config, emulate)
        role, (ref_losses, ref_params) = trainer.role, refs[name]
        if emulate:
            _check_weight_slots(trainer, records)
        if "overlapped" in name and trainer.grads.buckets:
            assert trainer.grads.readiness.early == len(trainer.grads.buckets), name
        peak = _zb_peak(plan, role.replica, role.stage)
        assert [r.peak_activations for r in records] == [peak] * STEPS, name
        if role.last_stage:
            got = [r.global_loss for r in records]
            assert got == pytest.approx(ref_losses, abs=ATOL), name
        for pname, p in trainer.model.named_parameters():
            torch.testing.assert_close(p.detach(), trainer.model.shard(pname, ref_params[pname]),
                                       rtol=0, atol=ATOL, msg=f"{name}: rank {rank} {pname}")


@pytest.mark.dist
def test_zb_h1_trains_exactly_like_one_process(tmp_path: Path) -> None:
    plans = exact_plans()
    config = TrainConfig(steps=STEPS, dtype="float64", optimizer="adamw", lr=0.05,
                         max_corpus_bytes=CORPUS_BYTES)
    refs = {name: single_process(plan, config) for name, plan in plans.items()}
    run_ranks(_exact_worker, 4, tmp_path, plans, refs)


def _fp16_worker(rank: int, world_size: int, plan: Plan) -> None:
    config = TrainConfig(steps=STEPS, optimizer="adamw", lr=3e-3,
                         max_corpus_bytes=CORPUS_BYTES, bucket_bytes=2048)
    runs = {}
    for kind in ("1f1b", "zb-h1"):
        trainer, records = _train(dataclasses.replace(plan, schedule=kind), rank, config,
                                  emulate=False)
        assert trainer.scaler is not None
        runs[kind] = ([r.global_loss for r in records], trainer.scaler.scale,
                      {n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    (losses, scale, params), (zb_losses, zb_scale, zb_params) = runs["1f1b"], runs["zb-h1"]
    assert zb_losses == losses and zb_scale == scale
    for name, p in params.items():
        assert torch.equal(zb_params[name], p), f"rank {rank} {name}"


@pytest.mark.dist
def test_zb_h1_under_fp16_loss_scaling_equals_1f1b(tmp_path: Path) -> None:
    """fp16 weights, fp32 gradient buffer (16-bit gradients added by hooks), loss scaling:
    the same arithmetic as 1F1B, so the same bits."""
    run_ranks(_fp16_worker, 4, tmp_path, with_job(hybrid_plan(), precision="fp16"))
