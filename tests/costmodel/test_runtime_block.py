"""The cost model's block against the runtime's own block (runtime/layers.DecoderLayer, TP 1,
fused attention through SDPA): the bytes autograd saves for backward, and the kernels the
forward and backward dispatch. Only this test imports torch: the cost model does not.

On CPU, SDPA runs `_scaled_dot_product_flash_attention_for_cpu`, which keeps what flash
attention keeps on a GPU (q, k, v, the output and the fp32 log-sum-exp), so the count here is
the fused-kernel convention the cost model prices. The model is multi-head: the runtime still
repeats GQA keys and values before SDPA (a copy SDPA then saves), where the cost model prices
the native GQA of flash kernels and `enable_gqa`.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from polychip.costmodel.blocks import Shard, block_forward
from polychip.costmodel.memory import block_activations
from polychip.costmodel.ops import Attention, Gemm, Op, Stream, backward_pass
from polychip.runtime.layers import DecoderLayer, rotary_cos_sin
from polychip.runtime.tensor_parallel import NO_TP
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VIEWS = frozenset({
    "view", "t", "_unsafe_view", "transpose", "detach", "unsqueeze", "expand", "split",
    "slice", "squeeze", "alias", "as_strided", "_reshape_alias", "permute",
})  # fmt: skip


def _block(precision: str, h: int, heads: int, ffn: int, seq: int, batch: int):
    config = ModelSpec("t", 1, h, heads, heads, ffn, 256)
    layer = DecoderLayer(config, NO_TP).to(DTYPES[precision])
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(batch, seq, h, dtype=DTYPES[precision], requires_grad=True)
    cos, sin = rotary_cos_sin(seq, config.head_dim, x)
    shard = Shard(config, TrainingJob(8, seq, precision=precision), batch, 1)
    return layer, x, cos, sin, shard


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("h", "heads", "ffn", "seq", "batch"),
                         [(64, 4, 176, 32, 2), (256, 8, 688, 128, 1)])  # fmt: skip
def test_saved_for_backward_matches_the_runtime_block(
    precision: str, h: int, heads: int, ffn: int, seq: int, batch: int
) -> None:
    layer, x, cos, sin, shard = _block(precision, h, heads, ffn, seq, batch)
    # Weights are model state, the rotary tables are per sequence: not activations.
    skip = {t.untyped_storage().data_ptr() for t in (*layer.parameters(), cos, sin)}
    saved: dict[int, int] = {}  # storage -> bytes: a storage saved twice counts once

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, cos, sin)
    measured = sum(saved.values())
    modelled = block_activations(shard.model, shard.job, batch, 1).saved_bytes
    assert modelled == pytest.approx(measured, rel=0.10)


class _Kernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.__name__.split(".")[0] not in VIEWS
        return func(*args, **(kwargs or {}))


def _kernels(ops: list[Op]) -> int:
    return sum(op.kernels if isinstance(op, Stream) else isinstance(op, Gemm | Attention)
               for op in ops)  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kernel_counts_match_the_runtime_block(precision: str) -> None:
    layer, x, cos, sin, shard = _block(precision, 64, 4, 176, 32, 2)
    grad = torch.ones(2, 32, 64, dtype=x.dtype)
    layer(x, cos, sin).backward(grad)  # gradients exist: the next backward accumulates
    with _Kernels() as fwd:
        y = layer(x, cos, sin)
    with _Kernels() as bwd:
        y.backward(grad)
    ops = block_forward(shard)
    assert _kernels(ops) == fwd.count  # RMSNorm 6 (+2 casts), 7 GEMMs, rotary 10, ...
    modelled = _kernels(backward_pass(ops, shard.c, shard.job.reduce_bytes))
    assert modelled == pytest.approx(bwd.count, rel=0.10)
