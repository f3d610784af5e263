"""The model's configuration and its blocks: RMSNorm, rotary embeddings, grouped-query
attention and SwiGLU, each split over a tensor-parallel group when one is given
(:mod:`polychip.runtime.tensor_parallel`). :mod:`polychip.runtime.model` assembles them into
stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.tensor_parallel import TensorParallel, copy_to_tp, reduce_from_tp

INIT_STD = 0.02
"""Standard deviation of the normal init of weight matrices (residual outputs are scaled down)."""


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads",
                     "ffn_hidden_size", "vocab_size"):
            value = getattr(self, name)
            if value < 1:
                raise RuntimeSetupError(f"ModelConfig.{name}={value}: must be >= 1; "
                                        f"give a positive size")
        if self.hidden_size % self.num_heads:
            raise RuntimeSetupError(
                f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}; choose sizes with hidden_size % num_heads == 0")
        if self.num_heads % self.num_kv_heads:
            raise RuntimeSetupError(
                f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}; grouped-query attention shares each "
                f"key/value head among num_heads / num_kv_heads query heads")
        if self.head_dim % 2:
            raise RuntimeSetupError(
                f"ModelConfig head_dim={self.head_dim} (hidden_size / num_heads) is odd; "
                f"rotary embeddings rotate pairs of channels, so make it even")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotary_cos_sin(seq_len: int, head_dim: int, theta: float, like: torch.Tensor
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
    (row-parallel): each TP rank holds a contiguous 1/t of the query and key/value heads."""

    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.head_dim = config.head_dim
        self.num_local_heads = config.num_heads // tp.size
        self.num_local_kv_heads = config.num_kv_heads // tp.size
        h, d = config.hidden_size, self.head_dim
        self.wq = nn.Linear(h, self.num_local_heads * d, bias=False)
        self.wk = nn.Linear(h, self.num_local_kv_heads * d, bias=False)
        self.wv = nn.Linear(h, self.num_local_kv_heads * d, bias=False)
        self.wo = nn.Linear(self.num_local_heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        x = copy_to_tp(x, self.tp)
        q = self.wq(x).view(b, s, self.num_local_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, self.num_local_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, self.num_local_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        group = self.num_local_heads // self.num_local_kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return reduce_from_tp(self.wo(out.transpose(1, 2).reshape(b, s, -1)), self.tp)


class MLP(nn.Module):
    """SwiGLU: w_down(silu(w_gate x) * w_up x). w_gate/w_up column-parallel, w_down row-parallel
    under TP."""

    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        local_ffn = config.ffn_hidden_size // tp.size
        self.w_gate = nn.Linear(config.hidden_size, local_ffn, bias=False)
        self.w_up = nn.Linear(config.hidden_size, local_ffn, bias=False)
        self.w_down = nn.Linear(local_ffn, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_tp(x, self.tp)
        return reduce_from_tp(self.w_down(F.silu(self.w_gate(x)) * self.w_up(x)), self.tp)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config, tp)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = MLP(config, tp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))
