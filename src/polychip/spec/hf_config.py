"""Hugging Face `config.json` -> ModelSpec, each family read with its own keys.

`model_type` picks the reader: gpt2, opt, gpt_neox, llama, mistral, qwen2. Each reader
takes the keys that decide the shape (sizes, activation, norm, positions, biases, tied
embeddings, OPT's projected embedding) and knows which other keys do not change it (token
ids, dropout, initialisation, dtype, ...); the Llama-like families' rotary base and scaling
and norm epsilon are read too (the runtime computes with them; transformers 4's
`rope_theta` / `rope_scaling` or transformers 5's `rope_parameters`). Any
other key, an activation polychip does not know, or a value it does not model (an explicit
head_dim that is not hidden_size / heads, a per-layer window) is an error naming the file,
the key and the fix: polychip never guesses a shape. An absent optional key takes the
Hugging Face class's own default for that family (docs/cost-model.md lists them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polychip.spec.errors import SpecError, pydantic_message
from polychip.spec.hf_keys import (
    COMMON,
    LLAMA_IGNORED,
    ROTARY,
    GPT2Keys,
    Keys,
    LlamaKeys,
    NeoXKeys,
    OPTKeys,
    words,
)
from polychip.spec.modelspec import GELU_ACTIVATIONS, ModelSpec


def _act(cfg: Keys, key: str, gated: bool, file: str) -> tuple[str, str]:
    """(mlp kind, activation) of a config's activation key."""
    act = getattr(cfg, key)
    name = "silu" if act == "swish" else act
    if gated and name in ("silu", *GELU_ACTIVATIONS):
        return ("swiglu" if name == "silu" else "geglu"), name
    if not gated and name in (*GELU_ACTIVATIONS, "relu"):
        return ("relu" if name == "relu" else "gelu"), name
    known = ", ".join(("silu", *GELU_ACTIVATIONS) if gated else (*GELU_ACTIVATIONS, "relu"))
    raise SpecError(
        f"activation {act!r} is not one polychip knows for this family's "
        f"{'gated' if gated else 'plain'} MLP (known: {known}); polychip does not guess the "
        f"cost of an unknown function: use one of these, or a preset",
        file=file,
        key=key,
    )


def _heads(h: int, heads: int, kv: int | None, file: str, head_dim: int | None = None) -> int:
    if h % heads:
        raise SpecError(
            f"hidden_size {h} is not divisible by the {heads} attention heads",
            file=file,
            key="hidden_size",
        )
    if head_dim is not None and head_dim != h // heads:
        raise SpecError(
            f"head_dim {head_dim} is not hidden_size / num_attention_heads = {h // heads}: "
            f"polychip models heads of hidden_size / num_attention_heads; such a model "
            f"(q width ≠ hidden size) cannot be estimated yet",
            file=file,
            key="head_dim",
        )
    kv = kv or heads
    if heads % kv:
        raise SpecError(
            f"num_key_value_heads {kv} must divide num_attention_heads {heads} "
            f"(grouped-query attention)",
            file=file,
            key="num_key_value_heads",
        )
    return kv


def _unsupported(key: str, why: str, fix: str, file: str) -> SpecError:
    return SpecError(f"{why}; {fix}", file=file, key=key)


def _gpt2(c: GPT2Keys, name: str, file: str) -> ModelSpec:
    if c.add_cross_attention:
        raise _unsupported("add_cross_attention", "cross-attention to an encoder is not "
                           "modelled", "set it to false (a decoder-only model)", file)  # fmt: skip
    mlp, act = _act(c, "activation_function", False, file)
    return ModelSpec(
        name, c.n_layer, c.n_embd, c.n_head, _heads(c.n_embd, c.n_head, None, file),
        c.n_inner or 4 * c.n_embd, c.vocab_size, mlp, c.tie_word_embeddings, family="gpt2",
        activation=act, norm="layernorm", position="learned", max_positions=c.n_positions,
        qkv_bias=True, attn_out_bias=True, mlp_bias=True,
    )  # fmt: skip


def _opt(c: OPTKeys, name: str, file: str) -> ModelSpec:
    if not c.layer_norm_elementwise_affine:
        raise _unsupported("layer_norm_elementwise_affine", "LayerNorms without weight and "
                           "bias are not modelled", "set it to true", file)  # fmt: skip
    mlp, act = _act(c, "activation_function", False, file)
    proj = c.word_embed_proj_dim or c.hidden_size
    return ModelSpec(
        name, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
        _heads(c.hidden_size, c.num_attention_heads, None, file), c.ffn_dim, c.vocab_size,
        mlp, c.tie_word_embeddings, family="opt", activation=act, norm="layernorm",
        position="learned", max_positions=c.max_position_embeddings, qkv_bias=c.enable_bias,
        attn_out_bias=c.enable_bias, mlp_bias=c.enable_bias,
        embed_proj_dim=0 if proj == c.hidden_size else proj,
        # Hugging Face OPTDecoder: a final LayerNorm only with pre-norm blocks
        final_norm=c.do_layer_norm_before and not c.remove_final_layer_norm,
    )  # fmt: skip


def _neox(c: NeoXKeys, name: str, file: str) -> ModelSpec:
    if not 0 < c.rotary_pct <= 1:
        raise _unsupported(
            "rotary_pct",
            f"rotary_pct {c.rotary_pct} is not in (0, 1]",
            "give the share of each head's dimensions that rotate",
            file,
        )
    mlp, act = _act(c, "hidden_act", False, file)
    return ModelSpec(
        name, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
        _heads(c.hidden_size, c.num_attention_heads, None, file), c.intermediate_size,
        c.vocab_size, mlp, c.tie_word_embeddings, family="gpt_neox", activation=act,
        norm="layernorm", max_positions=c.max_position_embeddings,
        qkv_bias=c.attention_bias, attn_out_bias=c.attention_bias, mlp_bias=True,
        parallel_residual=c.use_parallel_residual,
    )  # fmt: skip


def _rope(c: LlamaKeys, file: str) -> tuple[float, str]:
    """(rotary base, rope_type of rescaled frequencies or ""), from `rope_theta` and
    `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5)."""
    params = {**(c.rope_scaling or {}), **(c.rope_parameters or {})}
    theta = params.get("rope_theta", c.rope_theta or 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 0:
        raise _unsupported("rope_parameters", f"rope_theta {theta!r} is not a positive "
                           f"number", "give the rotary base (10000.0 for Llama 2)", file)
    kind = str(params.get("rope_type", params.get("type", "default")))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        kind = "partial"
    return float(theta), "" if kind == "default" else kind


def _qwen2_window(c: LlamaKeys, file: str) -> None:
    """Qwen2's sliding window: refused on any layer (Hugging Face ignores `sliding_window`
    unless `use_sliding_window`; transformers 5 says each layer's kind in `layer_types`)."""
    if c.use_sliding_window:
        raise _unsupported("use_sliding_window",
                           "Qwen2's window on some layers (max_window_layers) is not modelled",
                           "set it to false to estimate with full attention", file)
    if c.layer_types is not None and (len(c.layer_types) != c.num_hidden_layers
                                      or set(c.layer_types) != {"full_attention"}):
        raise _unsupported("layer_types", "only full attention on every layer is modelled "
                           f"(one 'full_attention' per layer, {c.num_hidden_layers})",
                           "set use_sliding_window to false and drop other layer kinds", file)


def _llama_like(family: str) -> Callable[[LlamaKeys, str, str], ModelSpec]:
    def read(c: LlamaKeys, name: str, file: str) -> ModelSpec:
        window = c.sliding_window or 0
        if family == "qwen2":
            _qwen2_window(c, file)
            window = 0  # Hugging Face Qwen2 ignores sliding_window unless it is enabled
        mlp, act = _act(c, "hidden_act", True, file)
        kv = _heads(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, file, c.head_dim)
        theta, scaling = _rope(c, file)
        return ModelSpec(
            name, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, kv,
            c.intermediate_size, c.vocab_size, mlp, c.tie_word_embeddings, family=family,  # type: ignore[arg-type]
            activation=act, max_positions=c.max_position_embeddings or 0,
            # Hugging Face: Qwen2 always has q/k/v biases; Mistral none; Llama by its flags
            qkv_bias=family == "qwen2" or (family == "llama" and c.attention_bias),
            attn_out_bias=family == "llama" and c.attention_bias,
            mlp_bias=family == "llama" and c.mlp_bias, sliding_window=window,
            rope_theta=theta, rope_scaling=scaling, norm_eps=c.rms_norm_eps,
        )  # fmt: skip

    return read


_READERS: dict[str, tuple[type[Keys], Callable[[Any, str, str], ModelSpec], frozenset[str]]] = {
    "gpt2": (GPT2Keys, _gpt2, words("""
        layer_norm_epsilon attn_pdrop embd_pdrop resid_pdrop n_ctx summary_type
        summary_use_proj summary_activation summary_proj_to_labels summary_first_dropout
        scale_attn_weights scale_attn_by_inverse_layer_idx reorder_and_upcast_attn
        n_special predict_special_tokens output_past""")),
    "opt": (OPTKeys, _opt, words("""
        dropout attention_dropout activation_dropout layerdrop _remove_final_layer_norm""")),
    "gpt_neox": (NeoXKeys, _neox, words("""
        layer_norm_eps attention_dropout hidden_dropout classifier_dropout
        use_memory_efficient_attention""") | ROTARY),
    "llama": (LlamaKeys, _llama_like("llama"), LLAMA_IGNORED),
    "mistral": (LlamaKeys, _llama_like("mistral"), LLAMA_IGNORED - {"pretraining_tp"}),
    "qwen2": (LlamaKeys, _llama_like("qwen2"), LLAMA_IGNORED | {"max_window_layers"}),
}  # fmt: skip
_OWN_KEYS = {
    "mistral": {"attention_bias", "mlp_bias", "use_sliding_window", "layer_types"},
    "qwen2": {"attention_bias", "mlp_bias"},
    "llama": {"sliding_window", "use_sliding_window", "layer_types"},
}


def _family_keys(family: str) -> frozenset[str]:
    model, _, ignored = _READERS[family]
    read = set(model.model_fields) - _OWN_KEYS.get(family, set())
    return frozenset(read | ignored | COMMON)


def _read_json(path: Path) -> dict[str, Any]:
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
            "a Hugging Face config.json is a JSON object (model_type, num_hidden_layers, ...)",
            file=str(path),
        )
    return data


def model_from_hf_config(path: Path) -> ModelSpec:
    """The model of a Hugging Face config.json, read by its `model_type`."""
    path = Path(path)
    file = str(path)
    data = _read_json(path)
    family = data.get("model_type")
    if family not in _READERS:
        what = "no model_type" if family is None else f"model_type {family!r} is unknown"
        raise SpecError(
            f"{what}: polychip reads the keys of each family by its model_type "
            f"({', '.join(_READERS)}); give the checkpoint's model_type, or use a preset",
            file=file,
            key="model_type",
        )
    known = _family_keys(family)
    for key in data:
        if key not in known and not key.startswith("_"):
            raise SpecError(
                f"polychip does not read this key of a {family} config and cannot tell "
                f"whether it changes the model's shape; if it does not (metadata, generation "
                f"settings), remove it from a copy of the file",
                file=file,
                key=key,
            )
    model, read, _ = _READERS[family]
    values = dict(data)
    if "_remove_final_layer_norm" in values:
        values["remove_final_layer_norm"] = values["_remove_final_layer_norm"]
    try:
        cfg = model.model_validate(values)
    except ValidationError as exc:
        raise pydantic_message(exc, file) from None
    name = path.stem if path.stem != "config" else path.parent.name or "hf-model"
    return read(cfg, name, file)
