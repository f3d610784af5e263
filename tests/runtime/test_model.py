"""The stage-by-stage model: a split model is exactly the full model, parameter by parameter."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.model import StageModule, build_full_model, build_stage, loss_fn
from polychip.runtime.tensor_parallel import TensorParallel
from polychip.spec.model import ModelSpec

TINY = ModelSpec("tiny-test", num_layers=4, hidden_size=16, num_heads=4, num_kv_heads=2,
                 ffn_hidden_size=32, vocab_size=64)
F64 = torch.float64


def _tokens(batch: int = 2, seq: int = 8, vocab: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def _split_run(spec: ModelSpec, bounds: list[int], seed: int
               ) -> tuple[list[StageModule], torch.Tensor, torch.Tensor]:
    """Run the stages [bounds[0], bounds[1]), [bounds[1], bounds[2]), ... in sequence."""
    stages = [build_stage(spec, a, b, seed=seed, dtype=F64)
              for a, b in itertools.pairwise(bounds)]
    inputs, targets = _tokens()
    x = inputs
    for stage in stages:
        x = stage(x)
    loss = loss_fn(x, targets)
    loss.backward()
    return stages, x, loss


def test_split_stages_equal_full_model_in_logits_loss_and_grads() -> None:
    full = build_full_model(TINY, seed=7, dtype=F64)
    inputs, targets = _tokens()
    logits = full(inputs)
    loss = loss_fn(logits, targets)
    loss.backward()

    stages, split_logits, split_loss = _split_run(TINY, [0, 1, 4], seed=7)
    assert torch.equal(split_logits, logits)
    assert torch.equal(split_loss, loss)

    split_params = {n: p for s in stages for n, p in s.named_parameters()}
    full_params = dict(full.named_parameters())
    assert split_params.keys() == full_params.keys()
    for name, p in full_params.items():
        assert torch.equal(split_params[name], p), name
        assert torch.equal(split_params[name].grad, p.grad), name


def test_parameter_names_use_global_layer_indices() -> None:
    stage = build_stage(TINY, 1, 3, dtype=F64)
    names = [n for n, _ in stage.named_parameters()]
    assert "layers.1.attn.wq.weight" in names
    assert "layers.2.mlp.w_down.weight" in names
    assert not any(n.startswith(("embed", "head", "final_norm", "layers.0.", "layers.3."))
                   for n in names)
    first, last = build_stage(TINY, 0, 1), build_stage(TINY, 1, 4)
    assert first.embed is not None and first.head is None
    assert last.head is not None and last.final_norm is not None and last.embed is None


def test_meta_built_stage_materialises_to_the_same_values() -> None:
    with torch.device("meta"):
        stage = StageModule(TINY, 2, 4, has_embedding=False, has_head=True)
    assert all(p.is_meta for p in stage.parameters())
    stage.materialize("cpu", seed=7, dtype=F64)
    eager = StageModule(TINY, 2, 4, has_embedding=False, has_head=True).to(F64)
    eager.init_weights(7)
    full = dict(build_full_model(TINY, seed=7, dtype=F64).named_parameters())
    for name, p in stage.named_parameters():
        assert not p.is_meta and p.dtype == F64
        assert torch.equal(p, dict(eager.named_parameters())[name]), name
        assert torch.equal(p, full[name]), name


def test_init_depends_on_seed_and_name() -> None:
    a = build_full_model(TINY, seed=1)
    b = build_full_model(TINY, seed=2)
    assert not torch.equal(a.layers["0"].attn.wq.weight, b.layers["0"].attn.wq.weight)
    assert not torch.equal(a.layers["0"].attn.wq.weight[:8], a.layers["0"].attn.wk.weight)
    assert torch.equal(a.final_norm.weight, torch.ones(16))


def test_tied_embeddings_split_matches_full_with_summed_grads() -> None:
    tied = ModelSpec("tied", num_layers=2, hidden_size=16, num_heads=4, num_kv_heads=4,
                     ffn_hidden_size=32, vocab_size=64, tie_embeddings=True)
    full = build_full_model(tied, seed=3, dtype=F64)
    assert full.head.weight is full.embed.weight
    assert "head.weight" not in dict(full.named_parameters())
    inputs, targets = _tokens()
    loss = loss_fn(full(inputs), targets)
    loss.backward()

    stages, _, split_loss = _split_run(tied, [0, 1, 2], seed=3)
    assert torch.equal(split_loss, loss)
    first, last = stages
    assert torch.equal(last.head.weight, first.embed.weight)
    torch.testing.assert_close(first.embed.weight.grad + last.head.weight.grad,
                               full.embed.weight.grad, rtol=0, atol=1e-15)


def test_an_odd_head_dim_is_refused_by_the_rotary_runtime() -> None:
    odd = dataclasses.replace(TINY, hidden_size=12, num_heads=4)  # head_dim 3
    with pytest.raises(RuntimeSetupError, match="head_dim=3"):
        StageModule(odd, 0, 4, True, True)


@pytest.mark.parametrize(("args", "fragment"), [
    ((0, 5, True, True), "layer range"),
    ((1, 4, True, True), "embedding"),
    ((0, 3, True, True), "head"),
    ((2, 2, False, False), "empty"),
])
def test_bad_stage_is_a_setup_error(args: tuple, fragment: str) -> None:
    with pytest.raises(RuntimeSetupError, match=fragment):
        StageModule(TINY, *args)


def test_tp_degree_must_divide_the_heads() -> None:
    with pytest.raises(RuntimeSetupError, match="does not divide num_kv_heads=2"):
        StageModule(TINY, 0, 4, True, True, tp=TensorParallel(4, 0))


def test_tp_ranks_hold_slices_of_the_same_initial_model() -> None:
    full = dict(build_full_model(TINY, seed=3, dtype=F64).named_parameters())
    for rank in range(2):
        shard = build_stage(TINY, 0, 4, seed=3, dtype=F64, tp=TensorParallel(2, rank))
        assert shard.layers["1"].attn.wq.weight.shape == (8, 16)
        assert shard.layers["1"].mlp.w_down.weight.shape == (16, 16)
        for name, p in shard.named_parameters():
            assert torch.equal(p, shard.shard(name, full[name])), name


def test_recompute_gives_the_same_gradients() -> None:
    plain = build_full_model(TINY, seed=2, dtype=F64)
    again = build_stage(TINY, 0, 4, seed=2, dtype=F64, recompute=True)
    inputs, targets = _tokens()
    for model in (plain, again):
        loss_fn(model(inputs), targets).backward()
    for (name, p), q in zip(plain.named_parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-15, msg=name)
