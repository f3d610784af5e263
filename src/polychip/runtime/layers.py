"""The model's blocks: RMSNorm, rotary embeddings, grouped-query attention and SwiGLU, each
split over a tensor-parallel group when one is given (:mod:`polychip.runtime.tensor_parallel`,
entered and left through :mod:`polychip.runtime.tp_regions`). Their shape is the plan's
:class:`polychip.spec.model.ModelSpec` (one home for a model's sizes and their checks);
:mod:`polychip.runtime.model` assembles the blocks into stages.

Under sequence parallelism a block's input and output are this rank's s/t positions of the
residual stream, and its norms run on them; attention sees the whole sequence (gathered
when entering the column-parallel projections)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polychip.runtime.tensor_parallel import TensorParallel
from polychip.runtime.tp_regions import column_parallel, leave_tp
from polychip.spec.model import ModelSpec

INIT_STD = 0.02
"""Standard deviation of the normal init of weight matrices (residual outputs are scaled down)."""
ROPE_THETA = 10000.0
"""Default base of the rotary embedding's frequencies (Su et al. 2021; Llama 1 and 2); a
model's own is its spec's ``rope_theta``."""
NORM_EPS = 1e-5
"""Default RMSNorm epsilon (Llama 2's rms_norm_eps); a model's own is its spec's
``norm_eps``."""


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotary_cos_sin(seq_len: int, head_dim: int, like: torch.Tensor, theta: float = ROPE_THETA
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [seq_len, head_dim] for the rotate-half (Llama) convention."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=like.device, dtype=dtype)
                               / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=like.device, dtype=dtype), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(like.dtype), angles.sin().to(like.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [b, heads, s, head_dim] by position."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Causal grouped-query attention. Separate wq/wk/wv (column-parallel under TP) and wo
    (row-parallel): each TP rank holds a contiguous 1/t of the query and key/value heads.
    Query heads share their key/value head inside the attention kernel (SDPA's
    ``enable_gqa``), without copies of the keys and values. With the model's ``qkv_bias``
    (Qwen2), wq/wk/wv carry biases, split like their output rows."""

    def __init__(self, model: ModelSpec, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.head_dim = model.head_dim
        self.num_local_heads = model.num_heads // tp.size
        self.num_local_kv_heads = model.num_kv_heads // tp.size
        h, d = model.hidden_size, self.head_dim
        bias = model.qkv_bias
        self.wq = nn.Linear(h, self.num_local_heads * d, bias=bias)
        self.wk = nn.Linear(h, self.num_local_kv_heads * d, bias=bias)
        self.wv = nn.Linear(h, self.num_local_kv_heads * d, bias=bias)
        self.wo = nn.Linear(self.num_local_heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = column_parallel(x, self.tp, self.wq.weight, self.wk.weight, self.wv.weight)
        if self.wq.bias is not None:
            q, k, v = q + self.wq.bias, k + self.wk.bias, v + self.wv.bias
        b, s, _ = q.shape  # the whole sequence
        q = q.view(b, s, self.num_local_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.num_local_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.num_local_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True,
            enable_gqa=self.num_local_heads != self.num_local_kv_heads)
        return leave_tp(self.wo(out.transpose(1, 2).reshape(b, s, -1)), self.tp)


class MLP(nn.Module):
    """SwiGLU: w_down(silu(w_gate x) * w_up x). w_gate/w_up column-parallel, w_down row-parallel
    under TP."""

    def __init__(self, model: ModelSpec, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        local_ffn = model.ffn_hidden_size // tp.size
        self.w_gate = nn.Linear(model.hidden_size, local_ffn, bias=False)
        self.w_up = nn.Linear(model.hidden_size, local_ffn, bias=False)
        self.w_down = nn.Linear(local_ffn, model.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = column_parallel(x, self.tp, self.w_gate.weight, self.w_up.weight)
        return leave_tp(self.w_down(F.silu(gate) * up), self.tp)


class DecoderLayer(nn.Module):
    def __init__(self, model: ModelSpec, tp: TensorParallel) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(model.hidden_size, model.norm_eps)
        self.attn = Attention(model, tp)
        self.mlp_norm = RMSNorm(model.hidden_size, model.norm_eps)
        self.mlp = MLP(model, tp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))
