"""Training essentials: weight decay on matrices only, the learning-rate schedule, and
gradient clipping by the global norm over every rank -- exact (float64) against torch's
``clip_grad_norm_`` on the whole model in one process, across pipeline stages, TP shards
(sequence and vocabulary parallelism), uneven replicas, ZeRO-1 and tied embeddings."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from polychip.plan import Plan
from polychip.runtime.data import SampleStream, open_source
from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.lr_schedule import LRSchedule
from polychip.runtime.model import build_full_model, build_stage, loss_fn
from polychip.runtime.optim import StageOptimizer
from polychip.runtime.precision import precision_of
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer
from polychip.spec.job import TrainingJob

from .distenv import run_ranks
from .plans import TINY4, cluster, dp_plan, hybrid_plan, pp_plan, with_job
from .reference import single_process
from .test_precision import _plan as precision_plan
from .test_precision import _trainer as precision_trainer

ATOL = 1e-12
STEPS = 3
MAX_NORM = 0.05  # the tiny models' gradient norms are ~0.3-1: every step clips
TIED = dataclasses.replace(TINY4, name="tiny4-tied", tie_embeddings=True)


# ---- the learning-rate schedule -----------------------------------------------------------
def test_warm_up_then_cosine_or_linear_decay_to_the_floor() -> None:
    cos = LRSchedule.of("cosine", 1.0, min_lr=0.1, warmup_steps=4, decay_steps=14)
    assert [cos.lr_at(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cos.lr_at(4) == 1.0 and cos.lr_at(9) == pytest.approx(0.55)
    assert cos.lr_at(14) == pytest.approx(0.1) and cos.lr_at(100) == pytest.approx(0.1)
    lin = LRSchedule.of("linear", 1.0, warmup_steps=0, decay_steps=10)  # floor: lr / 10
    assert lin.lr_at(0) == 1.0 and lin.lr_at(5) == pytest.approx(0.55)
    assert lin.lr_at(10) == pytest.approx(0.1) == lin.lr_at(50)
    const = LRSchedule.of("constant", 0.3, warmup_steps=3, decay_steps=10)
    assert [const.lr_at(t) for t in (0, 2, 3, 99)] == pytest.approx([0.1, 0.3, 0.3, 0.3])


def test_schedule_state_round_trips_and_bad_values_are_refused() -> None:
    cos = LRSchedule.of("cosine", 0.01, min_lr=0.0, warmup_steps=2, decay_steps=50)
    other = LRSchedule.of("constant", 1.0)
    other.load_state_dict(cos.state_dict())
    assert other == cos and [other.lr_at(t) for t in range(60)] == [
        cos.lr_at(t) for t in range(60)]
    with pytest.raises(RuntimeSetupError, match=r"min_lr=2\.0"):
        LRSchedule.of("cosine", 1.0, min_lr=2.0)
    with pytest.raises(RuntimeSetupError, match="choose one of constant, cosine, linear"):
        TrainConfig(lr_schedule="step")  # type: ignore[arg-type]
    with pytest.raises(RuntimeSetupError, match="clip_grad_norm=0"):
        TrainConfig(clip_grad_norm=0)


# ---- weight decay ---------------------------------------------------------------------------
def test_weight_decay_shrinks_matrices_and_leaves_norms_alone() -> None:
    """Zero gradients: AdamW's step is the decay alone, p * (1 - lr * wd), on matrices (the
    embedding and head too) and not on the norms' weights."""
    stage = build_stage(TINY4, 0, 4, dtype=torch.float64)
    precision = precision_of(TrainingJob(1, 1), "float64")
    grads = StageGrads(stage, [], [], {}, has_loss=False, tp_size=1)
    before = {n: p.detach().clone() for n, p in stage.named_parameters()}
    opt = StageOptimizer(grads, TrainConfig(lr=0.1, weight_decay=0.5), precision)
    assert len(opt.spans) > 2 * TINY4.num_layers  # cut at every norm
    opt.step()
    for name, p in stage.named_parameters():
        factor = 1.0 if name.endswith("norm.weight") else 1 - 0.1 * 0.5
        torch.testing.assert_close(p, before[name] * factor, rtol=0, atol=1e-15, msg=name)


# ---- clipping, exact across every layout ----------------------------------------------------
def _config(tokens: Path, kind: str) -> TrainConfig:
    return TrainConfig(steps=STEPS, dtype="float64", lr=0.05, weight_decay=0.1,
                       lr_schedule=kind, warmup_steps=1, min_lr=0.01,  # type: ignore[arg-type]
                       clip_grad_norm=MAX_NORM, data=str(tokens), bucket_bytes=4096)


def _islands_zero() -> Plan:
    c = cluster([{"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10},
                 {"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10}])
    chips = [(0, 0, "cpu-fast"), (0, 1, "cpu-fast"), (1, 0, "cpu-slow"), (1, 1, "cpu-slow")]
    plan = dp_plan(c, [(n, d, chip, s, 1) for (n, d, chip), s in zip(chips, (6, 2, 3, 1),
                                                                      strict=True)],
                   model=TINY4)
    return dataclasses.replace(plan, zero1=True)


def _tied_on_one_stage() -> Plan:
    """Tied embedding and head on one stage, in replicas of TP degrees 2, 1 and 1."""
    c = hybrid_plan().cluster
    return pp_plan(c, [([(0, 4, 0, (0, 1), "cpu-fast")], 4, 2),
                       ([(0, 4, 1, (0,), "cpu-slow")], 2, 1),
                       ([(0, 4, 1, (1,), "cpu-slow")], 3, 3)], model=TIED)


def _plans() -> dict[str, Plan]:
    """Four ranks each. hybrid: replica 0 a 2-stage pipeline (layers 1-3 and the head on a TP
    pair), replica 1 one TP-1 stage, shares 6 and 2."""
    hybrid, sp_vp = hybrid_plan(), {"sequence_parallel": True, "vocab_parallel": True}
    return {
        "pipeline + TP 2 + uneven replicas": hybrid,
        "... with sequence and vocabulary parallelism": with_job(hybrid, **sp_vp),
        "... under ZeRO-1": dataclasses.replace(hybrid, zero1=True),
        "... under ZeRO-1 with sequence and vocabulary parallelism": dataclasses.replace(
            with_job(hybrid, **sp_vp), zero1=True),
        "ZeRO-1 over two islands, uneven shares": _islands_zero(),
        "one pipeline of two TP pairs, ZeRO-1 (nothing shared)": dataclasses.replace(
            pp_plan(hybrid.cluster, [([(0, 2, 1, (0, 1), "cpu-slow"),
                                       (2, 4, 0, (0, 1), "cpu-fast")], 4, 2)], model=TINY4),
            zero1=True),
        "tied embeddings, TP 2 beside TP 1": _tied_on_one_stage(),
        "... with vocabulary parallelism": with_job(_tied_on_one_stage(), vocab_parallel=True),
    }


def _clip_worker(rank: int, world_size: int, plans: dict[str, Plan], tokens: Path) -> None:
    for i, (case, plan) in enumerate(plans.items()):
        config = _config(tokens, ("cosine", "linear")[i % 2])
        norms: list[float] = []
        losses, params = single_process(plan, config, norms=norms)
        assert len(norms) == STEPS and min(norms) > 2 * MAX_NORM, (case, norms)  # it clips
        trainer = Trainer(plan, config, build_topology(plan, rank, emulate=False,
                                                       timeout=config.timeout))
        records = trainer.run(STEPS)
        schedule = config.lr_schedule_of()
        for record, norm in zip(records, norms, strict=True):
            assert record.grad_norm == pytest.approx(norm, rel=1e-12, abs=0), case
            assert record.lr == schedule.lr_at(record.step)
        if trainer.role.last_stage:
            got = [r.global_loss for r in records]
            assert got == pytest.approx(losses, abs=ATOL), case
        for name, p in trainer.model.named_parameters():
            torch.testing.assert_close(p, trainer.model.shard(name, params[name]), rtol=0,
                                       atol=ATOL, msg=f"rank {rank} {name} ({case})")


@pytest.mark.dist
def test_clipping_by_the_global_norm_trains_exactly_like_one_process(tmp_path: Path) -> None:
    """3 AdamW steps (weight decay, warm-up then cosine or linear decay, clipping at a norm
    every step exceeds): every rank's step records the reference's norm before clipping and
    the schedule's rate, and every rank's part of every parameter equals single-process
    training with torch's clip_grad_norm_ to 1e-12."""
    tokens = tmp_path / "tokens.bin"  # ids over the whole vocabulary (every TP rank's rows)
    np.random.default_rng(0).integers(0, TINY4.vocab_size, 4096, dtype=np.uint16).tofile(tokens)
    run_ranks(_clip_worker, 4, tmp_path, _plans(), tokens)


def _fp16_worker(rank: int, world_size: int) -> None:
    """fp16: the norm is of the unscaled gradients; a skipped step clips nothing."""
    plan = precision_plan("fp16")
    trainer = precision_trainer(plan, rank, clip_grad_norm=0.1)
    assert trainer.scaler is not None
    trainer.scaler.scale = 2.0**24  # overflows at first
    records = [trainer.step(0)]
    while records[-1].grad_norm is None and len(records) < 12:
        records.append(trainer.step(len(records)))
    skipped = trainer.scaler.skipped
    assert 1 <= skipped == len(records) - 1  # the weights never moved until now
    first = records[-1]
    assert first.grad_norm is not None and math.isfinite(first.grad_norm)
    # the same step's gradient at the initial weights, in fp32, on one process
    model = build_full_model(plan.model, dtype=torch.float32)
    source = open_source(None, plan.model.vocab_size, trainer.config.max_corpus_bytes)
    x, y = SampleStream(source, plan.job.seq_len).batch_for(skipped, range(16))
    loss_fn(model(x), y).backward()
    want = float(torch.nn.utils.clip_grad_norm_(list(model.parameters()), math.inf))
    assert first.grad_norm == pytest.approx(want, rel=0.02)


@pytest.mark.dist
def test_fp16_clips_the_unscaled_gradients_and_skipped_steps_clip_nothing(
        tmp_path: Path) -> None:
    run_ranks(_fp16_worker, 2, tmp_path)
