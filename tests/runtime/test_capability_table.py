"""Every value of the runtime's capability table -- everything the planner may put in a plan --
runs on CPU and trains like the single-process reference: exactly (float64) for what changes
how the work is split, within a stated tolerance for the precisions, which change the
arithmetic. A value added to the table without a case here fails the first test."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from polychip.plan import Plan, plan_to_dict
from polychip.plan.capabilities import RUNTIME, Capabilities, missing_features
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import cpu_test_plan, hybrid_plan, interleaved_plan, with_job
from .reference import CORPUS_BYTES, single_process
from .test_empty_stages import empty_ends_plan

EXACT_STEPS, PRECISION_STEPS = 2, 4
ATOL = 1e-10
# Loss within this fraction of the float64 reference at every step (tests/runtime/
# test_precision.py measures bf16 at most 0.25 % off fp32 over 20 steps).
TOLERANCE = {"fp32": 1e-5, "tf32": 1e-3, "bf16": 0.02, "fp16": 0.02}


def _recompute(plan: Plan) -> Plan:
    rep = plan.replicas[0]
    stages = (dataclasses.replace(rep.stages[0], recompute=True), *rep.stages[1:])
    return dataclasses.replace(plan, replicas=(dataclasses.replace(rep, stages=stages),
                                               *plan.replicas[1:]))


def _family(**model: object) -> Plan:
    """hybrid_plan's layout with another family's block (its constants, its biases)."""
    plan = hybrid_plan()
    return dataclasses.replace(plan, model=dataclasses.replace(plan.model, **model))


# Mistral with a window that does not bind (seq_len 8); Qwen2's q/k/v biases, split by
# output rows on the TP pair, and its rotary base and norm epsilon.
MISTRAL = {"family": "mistral", "sliding_window": 8, "norm_eps": 1e-6}
QWEN2 = {"family": "qwen2", "qkv_bias": True, "rope_theta": 1e6, "norm_eps": 1e-6}
Make = Callable[[], Plan]
# (field of Capabilities, value) -> the plan that asks for it; hybrid_plan has a TP-2 stage
# holding the head beside a TP-1 replica, across two islands (docs: tests/runtime/plans.py).
EXACT: dict[tuple[str, object], Make] = {
    ("sequence_parallel", True): lambda: with_job(hybrid_plan(), sequence_parallel=True),
    ("sequence_parallel", False): lambda: with_job(hybrid_plan(), sequence_parallel=False),
    ("vocab_parallel", True): lambda: with_job(hybrid_plan(), vocab_parallel=True),
    ("vocab_parallel", False): lambda: with_job(hybrid_plan(), vocab_parallel=False),
    ("overlap_grad_sync", True): lambda: with_job(hybrid_plan(), overlap_grad_sync=True),
    ("overlap_grad_sync", False): lambda: with_job(hybrid_plan(), overlap_grad_sync=False),
    ("overlap_p2p", True): hybrid_plan,
    ("attention", "fused"): hybrid_plan,
    ("zero_stages", 0): hybrid_plan,
    ("zero_stages", 1): lambda: dataclasses.replace(hybrid_plan(), zero1=True),
    ("schedules", "1f1b"): hybrid_plan,
    ("schedules", "gpipe"): lambda: hybrid_plan("gpipe"),
    ("schedules", "interleaved-1f1b"): interleaved_plan,
    ("schedules", "zb-h1"): lambda: hybrid_plan("zb-h1"),
    ("recompute", False): hybrid_plan,
    ("recompute", True): lambda: _recompute(hybrid_plan()),
    ("model_families", "llama"): hybrid_plan,
    ("model_families", "mistral"): lambda: _family(**MISTRAL),
    ("model_families", "qwen2"): lambda: _family(**QWEN2),
    ("qkv_bias", True): lambda: _family(**QWEN2),
    ("mlp", "swiglu"): hybrid_plan,
    ("norms", "rmsnorm"): hybrid_plan,
    ("positions", "rope"): hybrid_plan,
    ("empty_stages", True): empty_ends_plan,
}
# Precisions and reduce dtypes: four single-stage replicas of uneven shares over three
# islands, trained in the plan's own dtypes.
PRECISION: dict[tuple[str, object], Make] = {
    **{("precisions", p): (lambda p=p: with_job(cpu_test_plan(), precision=p))
       for p in ("fp32", "tf32", "bf16", "fp16")},
    **{("grad_reduce_dtypes", d): (lambda d=d: with_job(cpu_test_plan(), precision="bf16",
                                                        grad_reduce_dtype=d))
       for d in ("fp32", "bf16", "fp16")},
}


def _table_values(caps: Capabilities) -> set[tuple[str, object]]:
    out = set()
    for f in dataclasses.fields(caps):
        value = getattr(caps, f.name)
        if isinstance(value, frozenset):
            out |= {(f.name, v) for v in value}
        elif value is True:
            out.add((f.name, True))
    return out


def test_every_value_of_the_table_has_a_case_that_asks_for_it() -> None:
    assert _table_values(RUNTIME) == set(EXACT) | set(PRECISION)
    for (field, value), make in {**EXACT, **PRECISION}.items():
        plan = make()
        assert missing_features(plan) == [], (field, value)
        with_it = missing_features(plan, dataclasses.replace(RUNTIME, **{field: (
            frozenset() if isinstance(getattr(RUNTIME, field), frozenset) else False)}))
        # the case really asks for the value: a table without it refuses the plan
        assert with_it, (field, value)


def _distinct(cases: dict[tuple[str, object], Make]) -> dict[str, Plan]:
    """The distinct plans of ``cases`` (several values are asked for by the same plan), by
    their JSON text."""
    return {json.dumps(plan_to_dict(p), sort_keys=True): p for p in (m() for m in cases.values())}


def _run(plan: Plan, rank: int, config: TrainConfig) -> tuple[Trainer, list]:
    trainer = Trainer(plan, config, build_topology(plan, rank, emulate=True,
                                                   timeout=config.timeout))
    records = trainer.run(config.steps)
    trainer.grads.close()
    return trainer, records


def _worker(rank: int, world_size: int, refs: dict) -> None:
    exact = TrainConfig(steps=EXACT_STEPS, dtype="float64", lr=0.05,
                        max_corpus_bytes=CORPUS_BYTES, bucket_bytes=4096)
    for key, plan in _distinct(EXACT).items():
        trainer, records = _run(plan, rank, exact)
        ref_losses, ref_params = refs[key]
        if trainer.role.last_stage and trainer.role.is_leader:
            got = [r.global_loss for r in records]
            assert got == pytest.approx(ref_losses, abs=ATOL), key
        for name, p in trainer.model.named_parameters():
            torch.testing.assert_close(p.detach(), trainer.model.shard(name, ref_params[name]),
                                       rtol=0, atol=ATOL, msg=f"{key} rank {rank} {name}")
    for key, plan in _distinct(PRECISION).items():
        config = dataclasses.replace(exact, steps=PRECISION_STEPS, dtype=None, lr=3e-3)
        _, records = _run(plan, rank, config)
        ref_losses = refs[key][0]
        tol = TOLERANCE[plan.job.precision]
        for record, want in zip(records, ref_losses, strict=True):
            if record.global_loss is not None:
                assert record.global_loss == pytest.approx(want, rel=tol), key


@pytest.mark.dist
def test_every_capability_trains_like_one_process(tmp_path: Path) -> None:
    exact = TrainConfig(steps=EXACT_STEPS, dtype="float64", lr=0.05,
                        max_corpus_bytes=CORPUS_BYTES)
    refs: dict = {key: single_process(plan, exact) for key, plan in _distinct(EXACT).items()}
    loose = dataclasses.replace(exact, steps=PRECISION_STEPS, lr=3e-3)
    refs |= {key: single_process(plan, loose) for key, plan in _distinct(PRECISION).items()}
    run_ranks(_worker, 4, tmp_path, refs)
