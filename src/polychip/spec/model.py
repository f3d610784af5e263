"""Model shapes: named presets or a Hugging Face config.json; per-layer sizes and FLOPs.

A model is `num_layers` identical decoder blocks plus an embedding (first pipeline stage)
and a final norm + output head + loss (last stage). All figures are per token or per
sequence as named. What a block keeps in memory depends on how the job runs it: that is the
cost model's (costmodel/memory.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from polychip.spec.errors import SpecError, pydantic_message


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    tie_embeddings: bool = False

    @property
    def gated_mlp(self) -> bool:
        """A gated MLP (SwiGLU: three matrices) rather than a plain one (two)."""
        return self.mlp == "swiglu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    # ---- parameters -------------------------------------------------------------------
    @property
    def attn_params(self) -> int:
        h = self.hidden_size
        return 2 * h * h + 2 * h * self.kv_dim  # wq, wo, wk, wv

    @property
    def mlp_params(self) -> int:
        mats = 3 if self.mlp == "swiglu" else 2
        return mats * self.hidden_size * self.ffn_hidden_size

    @property
    def layer_params(self) -> int:
        return self.attn_params + self.mlp_params + 2 * self.hidden_size  # + two norms

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """Final norm + output projection (0 extra weights when tied to the embedding)."""
        return self.hidden_size + (0 if self.tie_embeddings else self.vocab_size * self.hidden_size)

    @property
    def num_params(self) -> int:
        return self.num_layers * self.layer_params + self.embedding_params + self.head_params

    # ---- FLOPs (forward, per token; backward is 2x) -------------------------------------
    def layer_flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs of one block's forward for one token (2 per MAC) incl. attention."""
        matmul = 2 * (self.attn_params + self.mlp_params)
        attention = 4 * seq_len * self.hidden_size  # QK^T and AV, full (not causal-halved)
        return float(matmul + attention)

    def head_flops_per_token(self) -> float:
        return float(2 * self.vocab_size * self.hidden_size)

    def training_flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs (fwd + bwd, no recompute) -- the numerator of MFU."""
        fwd = self.num_layers * self.layer_flops_per_token(seq_len) + self.head_flops_per_token()
        return 3 * fwd

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelSpec:
        return ModelSpec(**data)


def _preset(name: str, L: int, h: int, a: int, kv: int, f: int, v: int, **kw: Any) -> ModelSpec:
    return ModelSpec(name, L, h, a, kv, f, v, **kw)


PRESETS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        # `tiny`: byte-level vocabulary, trains on CPU in the tests and the demo.
        _preset("tiny", 4, 64, 4, 2, 176, 256),
        _preset("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
        _preset("llama2-13b", 40, 5120, 40, 40, 13824, 32000),
        _preset("llama2-70b", 80, 8192, 64, 8, 28672, 32000),
        _preset("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
        _preset("llama3-70b", 80, 8192, 64, 8, 28672, 128256),
        _preset("qwen2-7b", 28, 3584, 28, 4, 18944, 152064),
        _preset("qwen2-72b", 80, 8192, 64, 8, 29568, 152064),
        # GPT-3 (like GPT-2 and Megatron's GPT) ties the output head to the embedding.
        _preset("gpt3-175b", 96, 12288, 96, 96, 49152, 50257, mlp="gelu", tie_embeddings=True),
    )
}


class _HFConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    num_hidden_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt | None = None
    intermediate_size: PositiveInt
    vocab_size: PositiveInt
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    model_type: str = Field(default="hf")


def model_from_hf_config(path: Path) -> ModelSpec:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON: {exc.msg} (line {exc.lineno})", file=str(path)) from None
    except UnicodeDecodeError:
        raise SpecError("not a text file (expected a JSON config)", file=str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read the model config: {exc.strerror}", file=str(path)) from None
    if not isinstance(data, dict):
        raise SpecError(
            "a Hugging Face config.json is a JSON object (num_hidden_layers, hidden_size, ...)",
            file=str(path),
        )
    try:
        cfg = _HFConfig.model_validate(data)
    except ValidationError as exc:
        raise pydantic_message(exc, str(path)) from None
    if cfg.hidden_size % cfg.num_attention_heads:
        raise SpecError(
            f"hidden_size {cfg.hidden_size} is not divisible by num_attention_heads "
            f"{cfg.num_attention_heads}",
            file=str(path),
            key="hidden_size",
        )
    kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
    if cfg.num_attention_heads % kv_heads:
        raise SpecError(
            f"num_key_value_heads {kv_heads} must divide num_attention_heads "
            f"{cfg.num_attention_heads} (grouped-query attention)",
            file=str(path),
            key="num_key_value_heads",
        )
    gated = cfg.hidden_act in ("silu", "swish", "swiglu")
    return ModelSpec(
        name=path.stem if path.stem != "config" else path.parent.name or "hf-model",
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        num_heads=cfg.num_attention_heads,
        num_kv_heads=kv_heads,
        ffn_hidden_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        mlp="swiglu" if gated else "gelu",
        tie_embeddings=cfg.tie_word_embeddings,
    )


def load_model(name_or_path: str) -> ModelSpec:
    """A preset name (`llama3-70b`) or the path of a Hugging Face config.json."""
    key = name_or_path.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return model_from_hf_config(path)
    raise SpecError(
        f"unknown model {name_or_path!r}: give a preset ({', '.join(PRESETS)}) "
        f"or the path of a Hugging Face config.json"
    )
