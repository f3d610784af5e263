"""A decoder-only transformer's shape: what it holds and what it computes, per token.

A model is `num_layers` identical blocks plus an embedding (first pipeline stage) and a
final norm + output head + loss (last stage). The fields say what differs between the
families polychip reads (spec/hf_config.py): the MLP (gated SwiGLU / GeGLU, or a plain
GELU / ReLU one), the norm (RMSNorm: a weight; LayerNorm: a weight and a bias), the
positions (rotary: no parameters; learned: a table), which linear layers carry a bias,
tied embeddings, OPT's token embedding narrower than the blocks (`embed_proj_dim`, with
project_in / project_out matrices), a final norm or none, a sliding attention window, and
the arithmetic constants the runtime computes with (rotary base and scaling, norm epsilon).
Defaults are Llama's block, so an old plan file without the newer fields reads as Llama.

Counts are exact: every tensor of the checkpoint (tests/spec check real checkpoints' counts).
FLOPs are matmul FLOPs, 2 per multiply-add; bias adds, norms and activations are not
counted as FLOPs (they are memory-bound; the cost model prices them by bytes).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Literal

from polychip.spec.errors import PolychipError, SpecError

Family = Literal["llama", "mistral", "qwen2", "gpt2", "opt", "gpt_neox"]
FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "gpt2", "opt", "gpt_neox")
Mlp = Literal["swiglu", "geglu", "gelu", "relu"]

GELU_ACTIVATIONS = (
    "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python", "gelu_accurate"
)  # fmt: skip
# The activation functions each MLP kind may use (Hugging Face ACT2FN names).
MLP_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "swiglu": ("silu",),  # silu(x W_gate) * (x W_up), then W_down
    "geglu": GELU_ACTIVATIONS,  # the same with a GELU
    "gelu": GELU_ACTIVATIONS,  # act(x W_fc1 + b) W_fc2 + b
    "relu": ("relu",),
}
# OPT's learned position table has 2 rows more than its context (Hugging Face
# OPTLearnedPositionalEmbedding: `offset = 2`, kept from fairseq's padding convention).
POSITION_TABLE_OFFSET = {"opt": 2}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    mlp: Mlp = "swiglu"
    tie_embeddings: bool = False
    family: Family = "llama"  # the block's architecture (Hugging Face `model_type`)
    activation: str = ""  # exact function (ACT2FN name); "" = the MLP kind's first
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    position: Literal["rope", "learned"] = "rope"
    max_positions: int = 0  # context the model was built for; 0 = not stated
    qkv_bias: bool = False  # biases on the q, k, v projections
    attn_out_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False  # biases on every MLP matrix
    embed_proj_dim: int = 0  # OPT: token embedding width when it is not hidden_size
    final_norm: bool = True  # a norm before the head (OPT with post-norm blocks has none)
    parallel_residual: bool = False  # GPT-NeoX: attention and MLP read the same input
    sliding_window: int = 0  # Mistral: each token attends to the last `w`; 0 = all before it
    # Arithmetic only (no parameters, no FLOPs): the runtime computes with them.
    rope_theta: float = 10000.0  # base of the rotary frequencies (Llama 2; Llama 3: 500000)
    rope_scaling: str = ""  # Hugging Face rope_type of rescaled rotary frequencies; "" = none
    norm_eps: float = 1e-5  # the norms' epsilon (Hugging Face rms_norm_eps)

    def __post_init__(self) -> None:
        """The one check of a model's shape (cost model, planner and runtime read it here)."""
        self._check_sizes()
        allowed = MLP_ACTIVATIONS.get(self.mlp)
        if allowed is None:
            raise PolychipError(
                f"model {self.name!r}: mlp {self.mlp!r} is not one of {', '.join(MLP_ACTIVATIONS)}"
            )
        if not self.activation:
            object.__setattr__(self, "activation", allowed[0])
        elif self.activation not in allowed:
            raise PolychipError(
                f"model {self.name!r}: activation {self.activation!r} does not fit a "
                f"{self.mlp} MLP (it uses {', '.join(allowed)})"
            )
        for key in ("rope_theta", "norm_eps"):
            if not getattr(self, key) > 0:
                raise SpecError(f"model {self.name!r} has {key}={getattr(self, key)}: it must "
                                f"be > 0; give a positive value", key=key)
        if self.position == "learned" and self.max_positions < 1:
            raise PolychipError(
                f"model {self.name!r}: learned positions need max_positions ≥ 1 (the rows "
                f"of the position table)"
            )

    def _check_sizes(self) -> None:
        for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads",
                    "ffn_hidden_size", "vocab_size"):
            if getattr(self, key) < 1:
                raise SpecError(f"model {self.name!r} has {key}={getattr(self, key)}: "
                                f"every size must be >= 1; give a positive size", key=key)
        if self.hidden_size % self.num_heads:
            raise SpecError(
                f"model {self.name!r}: hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}; every head has hidden_size / num_heads "
                f"channels, so choose sizes with hidden_size % num_heads == 0", key="hidden_size")
        if self.num_heads % self.num_kv_heads:
            raise SpecError(
                f"model {self.name!r}: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}; grouped-query attention shares each "
                f"key/value head among num_heads / num_kv_heads query heads", key="num_kv_heads")

    # ---- shape --------------------------------------------------------------------------
    @property
    def gated_mlp(self) -> bool:
        """A gated MLP (SwiGLU, GeGLU: three matrices) rather than a plain one (two)."""
        return self.mlp in ("swiglu", "geglu")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding (and of the tied output head)."""
        return self.embed_proj_dim or self.hidden_size

    @property
    def projected_embedding(self) -> bool:
        return self.embed_dim != self.hidden_size

    @property
    def max_seq_len(self) -> int | None:
        """Longest sequence the model can take: a learned table's context; None (no hard
        limit) with rotary positions."""
        return self.max_positions if self.position == "learned" else None

    def attention_keys(self, seq_len: int) -> int:
        """Keys each query attends to, counted full (not causally halved, as Megatron
        counts): the sequence, or the sliding window when it is shorter."""
        return min(seq_len, self.sliding_window) if self.sliding_window else seq_len

    def check_seq_len(self, seq_len: int) -> None:
        limit = self.max_seq_len
        if limit is not None and seq_len > limit:
            raise PolychipError(
                f"sequence length {seq_len} exceeds the {limit} learned positions of model "
                f"{self.name!r}: lower the sequence length to at most {limit}"
            )

    # ---- parameters ---------------------------------------------------------------------
    @property
    def norm_params(self) -> int:
        """One norm: RMSNorm a weight, LayerNorm a weight and a bias."""
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)

    @property
    def attn_weight_params(self) -> int:
        h = self.hidden_size
        return 2 * h * h + 2 * h * self.kv_dim  # wq, wo, wk, wv

    @property
    def attn_params(self) -> int:
        h = self.hidden_size
        bias = (h + 2 * self.kv_dim if self.qkv_bias else 0) + (h if self.attn_out_bias else 0)
        return self.attn_weight_params + bias

    @property
    def mlp_weight_params(self) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden_size * self.ffn_hidden_size

    @property
    def mlp_params(self) -> int:
        f = self.ffn_hidden_size
        bias = ((2 if self.gated_mlp else 1) * f + self.hidden_size) if self.mlp_bias else 0
        return self.mlp_weight_params + bias

    @property
    def layer_matmul_params(self) -> int:
        """Weights one token multiplies by in a block (the FLOP count's parameters)."""
        return self.attn_weight_params + self.mlp_weight_params

    @functools.cached_property
    def layer_params(self) -> int:  # cached: the planner's memory checks ask it often
        return self.attn_params + self.mlp_params + 2 * self.norm_params

    @property
    def position_params(self) -> int:
        """The learned position table (0 with rotary positions)."""
        if self.position != "learned":
            return 0
        return (self.max_positions + POSITION_TABLE_OFFSET.get(self.family, 0)) * self.hidden_size

    @property
    def projection_params(self) -> int:
        """OPT's project_in (or project_out): embed_dim x hidden, no bias; 0 without."""
        return self.embed_dim * self.hidden_size if self.projected_embedding else 0

    @property
    def output_embedding_params(self) -> int:
        """The vocabulary matrix the head multiplies by: its own, or the tied embedding."""
        return self.vocab_size * self.embed_dim

    @property
    def head_matmul_params(self) -> int:
        """Weights one token multiplies by in the head: the vocabulary matrix and OPT's
        project_out."""
        return self.output_embedding_params + self.projection_params

    @property
    def embedding_params(self) -> int:
        """First stage: token embedding + learned positions + OPT's project_in."""
        return self.output_embedding_params + self.position_params + self.projection_params

    @property
    def head_params(self) -> int:
        """Last stage: final norm + OPT's project_out + the output projection (0 extra
        weights when tied to the embedding)."""
        norm = self.norm_params if self.final_norm else 0
        own = 0 if self.tie_embeddings else self.output_embedding_params
        return norm + self.projection_params + own

    @property
    def num_params(self) -> int:
        return self.num_layers * self.layer_params + self.embedding_params + self.head_params

    # ---- FLOPs (forward, per token; backward is 2x) -------------------------------------
    def layer_flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs of one block's forward for one token (2 per MAC) incl. attention:
        QK^T and AV over `attention_keys(seq_len)` keys."""
        attention = 4 * self.attention_keys(seq_len) * self.num_heads * self.head_dim
        return float(2 * self.layer_matmul_params + attention)

    def head_flops_per_token(self) -> float:
        """Output projection (and OPT's project_out)."""
        return float(2 * self.head_matmul_params)

    def embedding_flops_per_token(self) -> float:
        """The lookup is a gather (no FLOPs); OPT's project_in is a matmul."""
        return float(2 * self.projection_params)

    def training_flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs (fwd + bwd, no recompute) -- the numerator of MFU."""
        blocks = self.num_layers * self.layer_flops_per_token(seq_len)
        return 3 * (blocks + self.head_flops_per_token() + self.embedding_flops_per_token())

    # ---- activations ---------------------------------------------------------------------
    def layer_activation_bytes_per_token(self, tp: int = 1) -> float:
        """Bytes one block keeps for backward per token, 16-bit, flash attention (no s^2
        scores), Megatron sequence parallelism inside TP so everything divides by `tp`.
        Generalises Korthikanti et al.'s 34*s*b*h to GQA and SwiGLU widths."""
        h, f = self.hidden_size, self.ffn_hidden_size
        attn = 2 * (h + h + (h + 2 * self.kv_dim) + h)  # norm in, qkv in, q/k/v, attn out
        # norm in, shared input of the up projections, then gate/up/product (gated) or
        # fc1/activation (plain) outputs. GPT shapes give 32*h vs Korthikanti's 34*h
        # (the difference is dropout masks, which Llama-style models do not have).
        mlp = 2 * (2 * h + (3 if self.gated_mlp else 2) * f)
        return (attn + mlp) / tp

    def layer_input_bytes_per_token(self) -> float:
        """What full recompute keeps per block per token: its 16-bit input."""
        return 2.0 * self.hidden_size

    # ---- files --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelSpec:
        return ModelSpec(**data)
