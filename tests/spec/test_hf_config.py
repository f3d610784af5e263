"""Hugging Face config.json files of six families, read with their own keys: fixtures typed
from the public configs of real checkpoints (tests/spec/hf_configs, no network), their
parameter counts against the checkpoints', and every unknown read as an error."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from polychip.spec.errors import SpecError
from polychip.spec.model import PRESETS, load_model, model_from_hf_config

CONFIGS = Path(__file__).parent / "hf_configs"
# The checkpoints' tensor counts (transformers' num_parameters()); exact.
CHECKPOINTS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "opt-125m": 125_239_296,
    "opt-350m": 331_196_416,
    "opt-1.3b": 1_315_758_080,
    "pythia-160m": 162_322_944,
    "pythia-1.4b": 1_414_647_808,
    "Llama-2-7b-hf": 6_738_415_616,
    "Mistral-7B-v0.1": 7_241_732_096,
    "Qwen2-7B": 7_615_616_512,
}
SAME_AS_PRESET = {
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "opt-125m": "opt-125m",
    "opt-350m": "opt-350m",
    "opt-1.3b": "opt-1.3b",
    "Llama-2-7b-hf": "llama2-7b",
    "Qwen2-7B": "qwen2-7b",
}


def _load(name: str):
    return load_model(str(CONFIGS / name))


def test_every_fixture_has_a_count() -> None:
    assert {p.name for p in CONFIGS.iterdir()} == set(CHECKPOINTS)


@pytest.mark.parametrize(("name", "count"), CHECKPOINTS.items())
def test_parameter_count_equals_the_checkpoints(name: str, count: int) -> None:
    m = _load(name)
    assert m.name == name  # the folder's name for a file called config.json
    assert m.num_params == count


@pytest.mark.parametrize(("name", "preset"), SAME_AS_PRESET.items())
def test_config_equals_the_preset(name: str, preset: str) -> None:
    m = _load(name)
    expected = PRESETS[preset].to_dict() | {"name": name}
    if name == "Qwen2-7B" or name == "Llama-2-7b-hf":
        # the presets leave the context unstated (rotary positions: no table)
        expected["max_positions"] = m.max_positions
    assert m.to_dict() == expected


def test_gpt2_reads_its_own_keys() -> None:
    m = _load("gpt2")
    assert (m.family, m.mlp, m.activation) == ("gpt2", "gelu", "gelu_new")
    assert (m.norm, m.position, m.max_positions) == ("layernorm", "learned", 1024)
    assert m.qkv_bias and m.attn_out_bias and m.mlp_bias and m.tie_embeddings
    assert m.ffn_hidden_size == 4 * 768  # n_inner absent = 4 n_embd


def test_opt_reads_its_own_keys() -> None:
    m, small = _load("opt-350m"), _load("opt-125m")
    assert (m.family, m.mlp, m.activation, m.norm) == ("opt", "relu", "relu", "layernorm")
    assert m.embed_proj_dim == 512 and small.embed_proj_dim == 0
    assert not m.final_norm and small.final_norm  # do_layer_norm_before: false / true
    assert m.position_params == (2048 + 2) * 1024  # OPT's offset of 2 rows


def test_neox_reads_its_own_keys() -> None:
    m = _load("pythia-160m")
    assert (m.family, m.mlp, m.activation, m.norm) == ("gpt_neox", "gelu", "gelu", "layernorm")
    assert m.position == "rope" and m.position_params == 0  # rotary on 25 % of each head
    assert m.parallel_residual and not m.tie_embeddings
    assert m.qkv_bias and m.attn_out_bias and m.mlp_bias


def test_mistral_keeps_its_sliding_window() -> None:
    m = _load("Mistral-7B-v0.1")
    assert (m.family, m.num_kv_heads, m.sliding_window) == ("mistral", 8, 4096)
    assert not (m.qkv_bias or m.attn_out_bias or m.mlp_bias)
    # v0.2 dropped the window and raised the rotary base to 1e6
    assert m.to_dict() | {"sliding_window": 0, "name": "mistral-7b", "max_positions": 0,
                          "rope_theta": 1e6} == PRESETS["mistral-7b"].to_dict()


def _write(tmp_path: Path, data: object, folder: str = "model") -> Path:
    path = tmp_path / folder / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _fixture(name: str) -> dict:
    return json.loads((CONFIGS / name / "config.json").read_text())


def test_llama_biases_and_gated_gelu(tmp_path: Path) -> None:
    data = _fixture("Llama-2-7b-hf") | {
        "attention_bias": True,
        "mlp_bias": True,
        "hidden_act": "gelu_pytorch_tanh",
    }
    m = load_model(str(_write(tmp_path, data)))
    h, f = 4096, 11008
    assert (m.mlp, m.activation, m.gated_mlp) == ("geglu", "gelu_pytorch_tanh", True)
    assert m.num_params - PRESETS["llama2-7b"].num_params == 32 * (4 * h + 2 * f + h)


def test_gqa_absent_is_multi_head(tmp_path: Path) -> None:
    data = {k: v for k, v in _fixture("Llama-2-7b-hf").items() if k != "num_key_value_heads"}
    assert load_model(str(_write(tmp_path, data))).num_kv_heads == 32


def test_qwen2_ignores_its_window_unless_enabled(tmp_path: Path) -> None:
    assert _load("Qwen2-7B").sliding_window == 0  # use_sliding_window: false
    with pytest.raises(SpecError, match="max_window_layers") as info:
        load_model(str(_write(tmp_path, _fixture("Qwen2-7B") | {"use_sliding_window": True})))
    assert info.value.key == "use_sliding_window"


def test_llama_families_give_the_runtime_their_rotary_base_and_norm_epsilon(
        tmp_path: Path) -> None:
    """transformers 4's rope_theta / rope_scaling and transformers 5's rope_parameters
    (and layer_types) are read; absent, Hugging Face's defaults (10000, 1e-6)."""
    qwen = _load("Qwen2-7B")
    assert (qwen.rope_theta, qwen.rope_scaling, qwen.norm_eps) == (1e6, "", 1e-6)
    llama = _load("Llama-2-7b-hf")
    assert (llama.rope_theta, llama.rope_scaling, llama.norm_eps) == (10000.0, "", 1e-5)
    v5 = {k: v for k, v in _fixture("Qwen2-7B").items() if k != "rope_theta"} | {
        "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"},
        "layer_types": ["full_attention"] * 28}
    assert load_model(str(_write(tmp_path, v5, "v5"))).rope_theta == 5e5
    llama31 = _fixture("Llama-2-7b-hf") | {"rope_theta": 5e5, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0}}
    m = load_model(str(_write(tmp_path, llama31, "l31")))
    assert (m.rope_theta, m.rope_scaling) == (5e5, "llama3")
    bare = {k: v for k, v in _fixture("Llama-2-7b-hf").items() if k != "rms_norm_eps"}
    assert load_model(str(_write(tmp_path, bare, "bare"))).norm_eps == 1e-6


def test_model_constants_must_be_positive() -> None:
    with pytest.raises(SpecError, match="norm_eps=0"):
        dataclasses.replace(PRESETS["tiny"], norm_eps=0.0)
    with pytest.raises(SpecError, match="rope_theta=-1"):
        dataclasses.replace(PRESETS["tiny"], rope_theta=-1.0)


BAD = [
    # (fixture, change, key, a word of the message)
    ("gpt2", {"activation_function": "swiglu_v7"}, "activation_function", "not one polychip"),
    ("Llama-2-7b-hf", {"hidden_act": "relu"}, "hidden_act", "gated"),
    ("opt-125m", {"activation_function": "silu"}, "activation_function", "plain"),
    ("Llama-2-7b-hf", {"model_type": "mixtral"}, "model_type", "gpt2, opt, gpt_neox"),
    ("Llama-2-7b-hf", {"model_type": None}, "model_type", "no model_type"),
    ("Llama-2-7b-hf", {"num_experts": 8}, "num_experts", "cannot tell whether"),
    ("Mistral-7B-v0.1", {"attention_bias": True}, "attention_bias", "does not read"),
    ("Llama-2-7b-hf", {"head_dim": 256}, "head_dim", "hidden_size / num_attention_heads"),
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention", "encoder"),
    ("opt-125m", {"layer_norm_elementwise_affine": False}, "layer_norm_elementwise_affine",
     "not modelled"),
    ("pythia-160m", {"rotary_pct": 0}, "rotary_pct", "not in (0, 1]"),
    ("Qwen2-7B", {"layer_types": ["sliding_attention"] * 28}, "layer_types", "full attention"),
    ("Llama-2-7b-hf", {"rope_parameters": {"rope_theta": "big"}}, "rope_parameters",
     "positive number"),
    ("Llama-2-7b-hf", {"rms_norm_eps": 0}, "rms_norm_eps", "greater than 0"),
    ("Llama-2-7b-hf", {"hidden_size": 4100}, "hidden_size", "divisible"),
    ("Llama-2-7b-hf", {"num_key_value_heads": 5}, "num_key_value_heads", "divide"),
    ("Llama-2-7b-hf", {"vocab_size": 0}, "vocab_size", "greater than 0"),
    ("Llama-2-7b-hf", {"intermediate_size": "big"}, "intermediate_size", "integer"),
    ("gpt2", {"n_layer": None}, "n_layer", "required"),
]  # fmt: skip


@pytest.mark.parametrize(("fixture", "change", "key", "rule"), BAD)
def test_errors_name_file_and_key(
    tmp_path: Path, fixture: str, change: dict, key: str, rule: str
) -> None:
    # a change to None removes the key
    data = {k: v for k, v in (_fixture(fixture) | change).items() if change.get(k, 0) is not None}
    path = _write(tmp_path, data)
    with pytest.raises(SpecError, match=re.escape(rule)) as info:
        load_model(str(path))
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe\x00\x80", "not a text file"),
    ],
)
def test_hf_config_unreadable(tmp_path: Path, content: bytes, rule: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=rule) as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_missing_hf_config_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        model_from_hf_config(tmp_path / "absent.json")


def test_named_file_and_model_folder(tmp_path: Path) -> None:
    path = tmp_path / "neox.json"
    path.write_text(json.dumps(_fixture("pythia-160m")))
    assert model_from_hf_config(path).name == "neox"
    assert load_model(str(CONFIGS / "gpt2" / "config.json")) == _load("gpt2")


def test_unknown_model_lists_presets(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_model("llama4-9000b")
    msg = str(info.value)
    assert "llama4-9000b" in msg and "llama3-70b" in msg and "config.json" in msg
    with pytest.raises(SpecError):
        load_model(str(tmp_path))  # a folder without config.json
