"""Measured peak memory on the CPU: the tensors a rank holds, counted as autograd saves them,
equal the tensors counted independently (walking the autograd graph, summing the model's,
the gradient buffer's and the optimizer's tensors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polychip.plan import Plan
from polychip.runtime.memory import MemoryCount, SavedTensors, storage_key
from polychip.runtime.model import build_stage, loss_fn
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import TINY4, hybrid_plan, pp_plan
from .reference import CORPUS_BYTES


def graph_saved_bytes(root: torch.autograd.graph.Node, params: list[torch.Tensor]) -> int:
    """Bytes of the storages every node of the graph under ``root`` saved for backward
    (its ``_saved_*`` attributes), each once, parameters left out."""
    excluded = {storage_key(p) for p in params}
    seen_nodes, keys, total, stack = set(), set(), 0, [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            value = getattr(node, name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for t in values:
                if isinstance(t, torch.Tensor) and storage_key(t) not in excluded | keys:
                    keys.add(storage_key(t))
                    total += t.untyped_storage().nbytes()
        stack += [fn for fn, _ in node.next_functions]
    return total


def test_saved_activations_are_counted_once_per_storage_and_released_by_backward() -> None:
    w = torch.randn(16, 16, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    meter = SavedTensors()
    meter.exclude = {storage_key(w)}
    with meter.watch():
        h = x @ w  # saves x (and w: a parameter, not counted)
        y = (x * h).tanh()  # saves x again (same storage), h, and tanh's result
    assert meter.current_bytes == graph_saved_bytes(y.grad_fn, [w])
    assert meter.current_bytes == 3 * 4 * 16 * 8  # x, h, tanh(x * h): once each
    y.sum().backward()
    assert meter.current_bytes == 0 and meter.peak_bytes == 3 * 4 * 16 * 8


def _micro_batch_activations(trainer: Trainer, plan: Plan) -> int:
    """One micro-batch through a copy of the rank's stage, counted by walking its graph."""
    role = trainer.role
    stage = build_stage(plan.model, role.layer_start, role.layer_end,
                        dtype=torch.float64, has_embedding=role.first_stage,
                        has_head=role.last_stage)
    shape = (role.micro_batch_size, plan.job.seq_len)
    x = (torch.randint(0, 256, shape) if role.first_stage
         else torch.randn(*shape, plan.model.hidden_size, dtype=torch.float64,
                          requires_grad=True))
    out = stage(x)
    if role.last_stage:  # the runner scales the loss by a Python number: autograd keeps it
        out = loss_fn(out, torch.randint(0, 256, shape))  # as an 8-byte "wrapped number",
    return graph_saved_bytes(out.grad_fn, list(stage.parameters()))  # never passed to hooks


def _memory_worker(rank: int, world_size: int, plan: Plan) -> None:
    config = TrainConfig(steps=2, dtype="float64", max_corpus_bytes=CORPUS_BYTES)
    trainer = Trainer(plan, config, build_topology(plan, rank, emulate=False))
    records = trainer.run(config.steps)
    # the weights live in one flat buffer (the loss slot and any padding included)
    params = trainer.grads.param_buffer.numel() * trainer.grads.param_buffer.element_size()
    grads = trainer.grads.buffer.numel() * trainer.grads.buffer.element_size()
    state = sum(v.numel() * v.element_size() for st in trainer.optimizer.inner.state.values()
                for v in st.values() if isinstance(v, torch.Tensor))  # float64: no master copies
    held = (2, 1)[rank]  # 1F1B, 2 stages, 3 micro-batches: min(S - i, M)
    activations = held * _micro_batch_activations(trainer, plan)
    first, steady = records
    assert [r.memory_kind for r in records] == ["cpu-tensors"] * 2
    assert [r.peak_activations for r in records] == [held, held]
    assert steady.memory == MemoryCount(params, grads, state, activations), (
        steady.memory, (params, grads, state, activations))
    assert steady.peak_memory_bytes == params + grads + state + activations
    # step 0: the optimizer's state is created by its update, after the activations are gone
    assert first.peak_memory_bytes == params + grads + max(activations, state)


@pytest.mark.dist
def test_cpu_peak_memory_is_the_tensors_counted_independently(tmp_path: Path) -> None:
    plan = hybrid_plan()
    two_stages = pp_plan(plan.cluster, [([(0, 1, 1, (0,), "cpu-slow"),
                                          (1, 4, 0, (0,), "cpu-fast")], 6, 2)], model=TINY4)
    run_ranks(_memory_worker, 2, tmp_path, two_stages)
