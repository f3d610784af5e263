"""Per-device memory: every term by hand, in-flight micro-batches, tied embeddings."""

from __future__ import annotations

import pytest

from polychip.costmodel.memory import (
    in_flight_micro_batches,
    stage_memory,
    stage_params,
)
from polychip.spec.model import ModelSpec

GIB = 2**30
# h = 1024, 16 heads (MHA), SwiGLU f = 4096, V = 32000, 8 layers.
M = ModelSpec("m", 8, 1024, 16, 16, 4096, 32000)
LAYER_PARAMS = 4 * 1024**2 + 3 * 1024 * 4096 + 2 * 1024  # q k v o + gate up down + 2 norms
TIED = ModelSpec("tied", 4, 64, 4, 4, 256, 1000, tie_embeddings=True)


def _mem(**kw: object):
    args = dict(
        seq_len=1024, num_layers=4, first=False, last=False, tp=2, micro_batch=2,
        in_flight=3, recompute=False, zero_shards=4, capacity_bytes=64 * GIB,
    )  # fmt: skip
    args.update(kw)
    return stage_memory(M, **args)  # type: ignore[arg-type]


def test_middle_stage_by_hand() -> None:
    assert M.layer_params == LAYER_PARAMS == 16_779_264
    mem = _mem()
    params = 4 * LAYER_PARAMS / 2  # 4 layers, TP 2
    assert mem.weights == 2 * params  # bf16
    assert mem.grads == 2 * params  # bf16
    assert mem.optimizer == 12 * params / 4  # fp32 master + m + v, ZeRO-1 over 4
    # Per token per layer: attention 2 (h + h + 3h + h) + MLP 2 (h + h + 3f) bytes = 16h + 6f,
    # sharded by TP (sequence parallel); 2 x 1024 tokens; 4 layers; 3 micro-batches.
    per_token_layer = (16 * 1024 + 6 * 4096) / 2
    assert mem.activations == 3 * 4 * 2 * 1024 * per_token_layer == 503_316_480
    assert mem.reserve == int(1.5 * GIB) + int(0.05 * 64 * GIB)
    assert mem.total == mem.weights + mem.grads + mem.optimizer + mem.activations + mem.reserve


def test_sixteen_bytes_per_parameter_without_zero() -> None:
    mem = _mem(zero_shards=1, tp=1)
    params = 4 * LAYER_PARAMS
    assert mem.weights + mem.grads + mem.optimizer == 16 * params
    assert _mem(zero_shards=0).optimizer == _mem(zero_shards=1).optimizer  # 0 = unsharded


def test_full_recompute_keeps_layer_inputs_plus_one_working_layer() -> None:
    mem = _mem(recompute=True)
    tokens = 2 * 1024
    kept = 3 * 4 * 2 * 1024 * tokens / 2  # 2 h bytes per token per layer, 3 in flight, TP 2
    one_layer = tokens * (16 * 1024 + 6 * 4096) / 2  # re-materialised during its backward
    assert mem.activations == kept + one_layer
    assert mem.activations < _mem().activations / 5


def test_first_and_last_stage_extras() -> None:
    first, last, middle = _mem(first=True), _mem(last=True), _mem()
    assert first.weights - middle.weights == 2 * 32000 * 1024 / 2  # embedding, vocab-parallel
    assert last.weights - middle.weights == 2 * (32000 * 1024 + 1024) / 2  # head + final norm
    # fp32 logits and their gradient for one micro-batch: 8 bytes x tokens x V / TP.
    assert last.activations - middle.activations == 8 * 2 * 1024 * 32000 / 2


def test_activations_scale_with_micro_batches_in_flight() -> None:
    one = _mem(in_flight=1).activations
    assert _mem(in_flight=5).activations == 5 * one
    assert _mem(micro_batch=4, in_flight=1).activations == 2 * one


@pytest.mark.parametrize(("num_stages", "num_micro"), [(1, 1), (4, 8), (4, 2), (8, 3)])
def test_in_flight_1f1b_and_gpipe(num_stages: int, num_micro: int) -> None:
    for i in range(num_stages):
        assert in_flight_micro_batches("1f1b", i, num_stages, num_micro) == min(
            num_stages - i, num_micro
        )
        assert in_flight_micro_batches("gpipe", i, num_stages, num_micro) == num_micro


def test_in_flight_interleaved_is_at_least_1f1b() -> None:
    # Megatron's interleaved schedule, S = 4, v = 2, M = 8: the first stage runs
    # 2 (S - 1) + (v - 1) S = 10 warm-up chunks + 1, each half a stage: 5.5 -> 6 micro-batches
    # (Narayanan et al.: S (1 + (S - 1)/(S v)) = 5.5), the last (v - 1) S + 1 = 5 -> 3.
    got = [in_flight_micro_batches("interleaved-1f1b", i, 4, 8, 2) for i in range(4)]
    assert got == [6, 5, 4, 3]
    for i in range(4):
        assert got[i] >= in_flight_micro_batches("1f1b", i, 4, 8)
    # Never more than all micro-batches; v = 1 is plain 1F1B.
    assert in_flight_micro_batches("interleaved-1f1b", 0, 4, 2, 4) == 2
    assert in_flight_micro_batches("interleaved-1f1b", 1, 4, 8, 1) == 3


def test_tied_head_on_its_own_stage_holds_a_copy_of_the_embedding() -> None:
    emb, layer, h = TIED.vocab_size * TIED.hidden_size, TIED.layer_params, TIED.hidden_size
    # One stage: the embedding once, used twice.
    assert stage_params(TIED, 4, True, True) == 4 * layer + emb + h == TIED.num_params
    # Two stages: the last stage's output projection is a real tensor there too.
    assert stage_params(TIED, 2, True, False) == 2 * layer + emb
    assert stage_params(TIED, 2, False, True) == 2 * layer + emb + h
    untied = ModelSpec("untied", 4, 64, 4, 4, 256, 1000)
    assert stage_params(untied, 2, False, True) == 2 * layer + emb + h
