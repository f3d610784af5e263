"""Checkpoints independent of the layout: a run saved under one plan resumes under another
(other stage split, TP degree, replicas, batch shares, ZeRO-1) and trains on exactly as if
it had never stopped -- in float64, equal to the single-process reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from polychip.plan import Plan
from polychip.runtime.checkpoint import Checkpointer, _ShardReader
from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest
from polychip.runtime.session import resume, run_logged
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import TINY4, hybrid_plan, pp_plan
from .reference import CORPUS_BYTES, single_process

ATOL = 1e-12
TOTAL = 6


def _plan_b() -> Plan:
    """Against hybrid_plan (1 | 3 layers, TP 2 on the second stage, shares 6 and 2): 3 | 1
    layers with TP 2 on the first stage, shares 5 and 3, no ZeRO-1."""
    c = hybrid_plan().cluster
    return pp_plan(c, [([(0, 3, 0, (0, 1), "cpu-fast"), (3, 4, 1, (0,), "cpu-slow")], 5, 1),
                       ([(0, 4, 1, (1,), "cpu-slow")], 3, 3)], model=TINY4)


def _config(root: Path, steps: int, **kw: object) -> TrainConfig:
    # decay on matrices only (two parameter groups), warm-up + cosine over the whole run,
    # clipping that binds: all of it must go on across the resume exactly
    return TrainConfig(steps=steps, dtype="float64", lr=0.05, bucket_bytes=4096,
                       max_corpus_bytes=CORPUS_BYTES, checkpoint_dir=str(root),
                       lr_schedule="cosine", warmup_steps=2, lr_decay_steps=TOTAL,
                       clip_grad_norm=0.05, **kw)


def _trainer(plan: Plan, rank: int, config: TrainConfig) -> Trainer:
    return Trainer(plan, config, build_topology(plan, rank, emulate=True,
                                                timeout=config.timeout))


def _train_worker(rank: int, world_size: int, plan: Plan, config: TrainConfig,
                  check_reference: bool) -> None:
    trainer = _trainer(plan, rank, config)
    checkpoints = Checkpointer(trainer, config.checkpoint_dir or "", config.keep)
    start = resume(checkpoints) if config.resume else 0
    records = run_logged(trainer, start, checkpoints)
    assert [r.step for r in records] == list(range(start, config.steps))
    if not check_reference:
        return
    ref_losses, ref_params = single_process(plan, dataclasses.replace(config, steps=TOTAL))
    if trainer.role.last_stage:
        for record in records:
            assert record.global_loss == pytest.approx(ref_losses[record.step], abs=ATOL)
    for name, p in trainer.model.named_parameters():
        want = trainer.model.shard(name, ref_params[name])
        torch.testing.assert_close(p, want, rtol=0, atol=ATOL, msg=f"rank {rank} {name}")


@pytest.mark.dist
def test_three_steps_under_a_then_three_under_b_equal_six_in_one_process(tmp_path: Path
                                                                         ) -> None:
    a = dataclasses.replace(hybrid_plan(), zero1=True)
    b = _plan_b()
    root = tmp_path / "ckpt"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_ranks(_train_worker, a.world_size, tmp_path / "a", a, _config(root, 3), False)
    saved = latest_complete(root)
    assert saved is not None and saved.name == "step-000003"
    manifest = read_manifest(saved)
    assert manifest.step == 3 and manifest.samples_seen == 3 * a.job.global_batch
    assert manifest.state["optimizer_step"] == 3
    # every parameter of the model, under its global name, whole (the tied head: none here)
    assert set(manifest.tensors) == {n for n, _ in _full_names()}
    run_ranks(_train_worker, b.world_size, tmp_path / "b", b,
              _config(root, TOTAL, resume=True), True)
    assert latest_complete(root).name == f"step-{TOTAL:06d}"


def _full_names() -> list[tuple[str, torch.Size]]:
    from polychip.runtime.model import build_full_model

    return [(n, p.shape) for n, p in build_full_model(TINY4).named_parameters()]


def _save_worker(rank: int, world_size: int, plan: Plan, config: TrainConfig) -> None:
    trainer = _trainer(plan, rank, config)
    trainer.run(2)
    checkpoints = Checkpointer(trainer, config.checkpoint_dir or "")
    checkpoints.save(2)
    checkpoints.wait()


@pytest.mark.dist
def test_mixed_precision_save_keeps_fp32_masters_and_adam_state(tmp_path: Path) -> None:
    """bf16 weights, fp32 masters, ZeRO-1 shards: the save holds the fp32 masters and AdamW's
    m and v of every parameter, whole, assembled from the TP parts and ZeRO-1 shards."""
    plan = dataclasses.replace(hybrid_plan(), zero1=True)
    root = tmp_path / "ckpt"
    config = TrainConfig(steps=2, lr=0.05, bucket_bytes=4096, max_corpus_bytes=CORPUS_BYTES,
                         checkpoint_dir=str(root))
    assert plan.job.precision == "bf16"
    (tmp_path / "run").mkdir()
    run_ranks(_save_worker, plan.world_size, tmp_path / "run", plan, config)
    folder = latest_complete(root)
    assert folder is not None
    manifest = read_manifest(folder)
    reader = _ShardReader(folder, manifest)
    assert manifest.state_keys == ("param", "exp_avg", "exp_avg_sq")
    for name, shape in _full_names():
        master, v = reader.full(name, "param"), reader.full(name, "exp_avg_sq")
        assert master.dtype == torch.float32 and master.shape == shape
        assert bool((v > 0).any()), f"{name}: AdamW's v is empty in the save"
    # the masters are finer than the bf16 weights they round to
    wq = reader.full("layers.1.attn.wq.weight", "param")
    assert not torch.equal(wq, wq.to(torch.bfloat16).float())
