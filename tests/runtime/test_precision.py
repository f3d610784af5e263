"""Mixed precision as large-model training does it: 16-bit weights, fp32 master weights and
AdamW state, gradients accumulated and reduced in the job's reduce dtype, fp16 loss scaling;
bf16 training tracks fp32; every rank holds the bytes the cost model's convention prices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from polychip.plan import Plan
from polychip.runtime.precision import LossScaler, precision_of, use_matmul_precision
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer
from polychip.spec.job import TrainingJob
from polychip.spec.model import PRESETS

from .distenv import run_ranks
from .plans import cluster, dp_plan

STEPS = 20
TRACKS = 0.01  # bf16's loss within 1 % of fp32's at every step (measured: at most 0.25 %)


def _plan(precision: str, **job: object) -> Plan:
    c = cluster([{"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10}])
    plan = dp_plan(c, [(0, 0, "cpu-fast", 8, 4), (0, 1, "cpu-fast", 8, 4)],
                   model=PRESETS["tiny"], seq_len=64)
    return dataclasses.replace(plan, job=dataclasses.replace(plan.job, precision=precision,
                                                             **job))


def _trainer(plan: Plan, rank: int, **config: object) -> Trainer:
    settings: dict = {"steps": STEPS, "lr": 3e-3, "max_corpus_bytes": 256 * 1024, **config}
    cfg = TrainConfig(**settings)
    return Trainer(plan, cfg, build_topology(plan, rank, emulate=True, timeout=cfg.timeout))


def _bytes_held(trainer: Trainer, plan: Plan) -> None:
    """The memory convention (docs/cost-model.md): weights in the compute dtype, the
    gradient buffer in the reduce dtype, fp32 master + m + v (12 bytes) or m + v (8 bytes)."""
    job, params = plan.job, sum(p.numel() for p in trainer.model.parameters())
    assert sum(p.numel() * p.element_size() for p in trainer.model.parameters()) == (
        job.compute_bytes * params)
    assert trainer.grads.buffer.element_size() == job.reduce_bytes
    per_param = 12 if job.mixed_precision else 8
    assert trainer.optimizer.state_bytes() == per_param * params


def _tracking_worker(rank: int, world_size: int) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        plan = _plan(precision)
        trainer = _trainer(plan, rank)
        assert trainer.model.embed.weight.dtype == (
            torch.bfloat16 if precision == "bf16" else torch.float32)
        losses[precision] = [r.global_loss for r in trainer.run(STEPS)]
        _bytes_held(trainer, plan)
    for step, (full, half) in enumerate(zip(losses["fp32"], losses["bf16"], strict=True)):
        assert abs(half - full) <= TRACKS * full, (step, full, half)
    assert losses["bf16"][-1] < 0.7 * losses["bf16"][0]  # it trains
    trainer = _trainer(_plan("fp32", grad_reduce_dtype="bf16"), rank, steps=1)
    trainer.run(1)  # AdamW makes its state at the first step
    _bytes_held(trainer, _plan("fp32", grad_reduce_dtype="bf16"))


@pytest.mark.dist
def test_bf16_with_fp32_master_weights_tracks_fp32(tmp_path: Path) -> None:
    run_ranks(_tracking_worker, 2, tmp_path)


def _fp16_worker(rank: int, world_size: int) -> None:
    plan = _plan("fp16")
    trainer = _trainer(plan, rank)
    assert trainer.scaler is not None
    trainer.scaler.scale, trainer.scaler.growth_interval = 2.0**24, 3  # overflows at first
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    first = trainer.step(0)
    assert trainer.scaler.skipped == 1 and trainer.scaler.scale == 2.0**23
    for n, p in trainer.model.named_parameters():  # a skipped step changes nothing
        assert torch.equal(p, before[n]), n
    records = [first, *(trainer.step(s) for s in range(1, STEPS))]
    state = trainer.scaler.state_dict()
    # it backed off until the gradients fit, then trained (growing the scale after 3 good
    # steps, and backing off again when that overflowed)
    assert 1 < state["skipped"] < STEPS // 2 and 2.0**10 <= state["scale"] < 2.0**23
    assert records[-1].global_loss < 0.75 * records[0].global_loss
    again = LossScaler()
    again.load_state_dict(state)
    assert again.state_dict() == state


@pytest.mark.dist
def test_fp16_dynamic_loss_scaling_skips_overflowing_steps_on_every_rank(tmp_path: Path) -> None:
    run_ranks(_fp16_worker, 2, tmp_path)


def test_loss_scaler_backs_off_and_grows() -> None:
    s = LossScaler(scale=8.0, growth_interval=2, min_scale=2.0)
    s.update(found_inf=True)
    assert (s.scale, s.skipped, s.good_steps) == (4.0, 1, 0)
    s.update(found_inf=False)
    assert s.scale == 4.0
    s.update(found_inf=False)
    assert s.scale == 8.0  # two good steps in a row
    for _ in range(5):
        s.update(found_inf=True)
    assert s.scale == 2.0  # never below min_scale


def test_which_dtype_holds_what() -> None:
    job = TrainingJob(8, 64)
    bf16 = precision_of(job)
    assert (bf16.compute, bf16.grad, bf16.master, bf16.loss_scaling) == (
        torch.bfloat16, torch.float32, torch.float32, False)
    fp16 = precision_of(dataclasses.replace(job, precision="fp16", grad_reduce_dtype="fp16"))
    assert (fp16.compute, fp16.grad, fp16.loss_scaling) == (torch.float16, torch.float16, True)
    fp32 = precision_of(dataclasses.replace(job, precision="fp32"))
    assert (fp32.compute, fp32.master, fp32.optimizer_dtype) == (
        torch.float32, None, torch.float32)
    tf32 = precision_of(dataclasses.replace(job, precision="tf32"))
    use_matmul_precision(tf32, torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "high"
    use_matmul_precision(fp32, torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"
    exact = precision_of(job, "float64")
    assert (exact.compute, exact.grad, exact.master) == (torch.float64, torch.float64, None)
