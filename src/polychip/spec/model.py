"""Models: named presets or a Hugging Face config.json, as a `ModelSpec`.

The shape and its counts live in `modelspec.py`; reading each Hugging Face family's keys in
`hf_config.py`. Presets are the published shapes of real checkpoints (tests/spec check
their parameter counts against the released ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polychip.spec.errors import SpecError
from polychip.spec.hf_config import model_from_hf_config
from polychip.spec.modelspec import ModelSpec

__all__ = ["PRESETS", "ModelSpec", "load_model", "model_from_hf_config"]


def _preset(name: str, L: int, h: int, a: int, kv: int, f: int, v: int, **kw: Any) -> ModelSpec:
    return ModelSpec(name, L, h, a, kv, f, v, **kw)


# GPT-2 (Radford et al. 2019; Hugging Face openai-community/gpt2*): pre-LayerNorm blocks,
# learned positions, biases on every linear layer, tanh-approximated GELU, tied head.
_GPT2 = {"mlp": "gelu", "activation": "gelu_new", "tie_embeddings": True, "family": "gpt2",
         "norm": "layernorm", "position": "learned", "max_positions": 1024, "qkv_bias": True,
         "attn_out_bias": True, "mlp_bias": True}  # fmt: skip
# OPT (Zhang et al. 2022; facebook/opt-*): the same with ReLU, 2048 positions (+2 rows).
_OPT = _GPT2 | {"mlp": "relu", "activation": "relu", "family": "opt", "max_positions": 2048}

_QWEN2 = {"family": "qwen2", "qkv_bias": True, "rope_theta": 1e6, "norm_eps": 1e-6}

PRESETS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        # `tiny`: byte-level vocabulary, trains on CPU in the tests and the demo.
        _preset("tiny", 4, 64, 4, 2, 176, 256),
        _preset("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
        _preset("llama2-13b", 40, 5120, 40, 40, 13824, 32000),
        _preset("llama2-70b", 80, 8192, 64, 8, 28672, 32000),
        # Llama 3 (meta-llama/Meta-Llama-3-*): rotary base 500000 (Llama 2: 10000)
        _preset("llama3-8b", 32, 4096, 32, 8, 14336, 128256, rope_theta=500000.0),
        _preset("llama3-70b", 80, 8192, 64, 8, 28672, 128256, rope_theta=500000.0),
        # Mistral-7B v0.2 / v0.3: full attention (v0.1's 4096-token window: read its
        # config.json, which says so)
        _preset("mistral-7b", 32, 4096, 32, 8, 14336, 32000, family="mistral",
                rope_theta=1e6),
        # Qwen2 always has biases on q, k and v (Hugging Face Qwen2Attention); its configs
        # say rope_theta 1e6, rms_norm_eps 1e-6.
        _preset("qwen2-7b", 28, 3584, 28, 4, 18944, 152064, **_QWEN2),
        _preset("qwen2-72b", 80, 8192, 64, 8, 29568, 152064, **_QWEN2),
        _preset("gpt2", 12, 768, 12, 12, 3072, 50257, **_GPT2),
        _preset("gpt2-medium", 24, 1024, 16, 16, 4096, 50257, **_GPT2),
        _preset("gpt2-large", 36, 1280, 20, 20, 5120, 50257, **_GPT2),
        _preset("gpt2-xl", 48, 1600, 25, 25, 6400, 50257, **_GPT2),
        _preset("opt-125m", 12, 768, 12, 12, 3072, 50272, **_OPT),
        # opt-350m: post-LayerNorm blocks (no final norm), a 512-wide embedding projected
        # in and out of the 1024-wide blocks.
        _preset(
            "opt-350m", 24, 1024, 16, 16, 4096, 50272, **_OPT, embed_proj_dim=512, final_norm=False
        ),
        _preset("opt-1.3b", 24, 2048, 32, 32, 8192, 50272, **_OPT),
        # GPT-3 (Brown et al. 2020): "the same model and architecture as GPT-2" at 2048
        # positions (its alternating sparse attention layers are not modelled).
        _preset("gpt3-175b", 96, 12288, 96, 96, 49152, 50257, **_GPT2 | {"max_positions": 2048}),
    )
}


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
