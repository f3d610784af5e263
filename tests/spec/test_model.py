"""Model shapes against published parameter counts and the field's FLOP and activation
formulas (REFERENCES.md), Hugging Face config.json loading, and the training job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polychip.spec.errors import PolychipError, SpecError
from polychip.spec.job import TrainingJob
from polychip.spec.model import PRESETS, ModelSpec, load_model, model_from_hf_config

# Published totals (model cards / papers), in parameters.
PUBLISHED = {
    "llama2-7b": 6.74e9,
    "llama2-13b": 13.0e9,
    "llama2-70b": 69.0e9,
    "llama3-8b": 8.03e9,
    "llama3-70b": 70.6e9,
    "qwen2-7b": 7.62e9,
    "qwen2-72b": 72.7e9,
    "gpt3-175b": 175e9,
}


def test_every_issue_preset_exists() -> None:
    assert set(PUBLISHED) | {"tiny"} <= set(PRESETS)


@pytest.mark.parametrize(("name", "published"), PUBLISHED.items())
def test_parameter_count_matches_published(name: str, published: float) -> None:
    assert load_model(name).num_params == pytest.approx(published, rel=0.02)


def test_gpt3_parameters_match_megatron_formula() -> None:
    # Narayanan et al. 2021: P = 12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h)), which counts
    # biases and learned position embeddings (s = 2048) that a Llama-style block lacks:
    # together < 0.1 % of the total.
    m = load_model("gpt3-175b")
    L, h, V, s = m.num_layers, m.hidden_size, m.vocab_size, 2048
    megatron = 12 * L * h**2 * (1 + 13 / (12 * h) + (V + s) / (12 * L * h))
    assert m.num_params == pytest.approx(megatron, rel=1e-3)
    assert m.tie_embeddings  # GPT-3 shares the embedding with the output head


def test_llama2_7b_parameters_by_hand() -> None:
    # 32 x (4 h^2 attention + 3 h f SwiGLU + 2 h norms) + 2 V h (untied) + h (final norm)
    h, f, V = 4096, 11008, 32000
    expected = 32 * (4 * h * h + 3 * h * f + 2 * h) + 2 * V * h + h
    assert load_model("llama2-7b").num_params == expected == 6_738_415_616


def test_gqa_shrinks_only_k_and_v() -> None:
    m = load_model("llama3-8b")  # 32 heads, 8 kv heads, head_dim 128
    assert m.head_dim == 128 and m.kv_dim == 1024
    assert m.attn_params == 2 * 4096 * 4096 + 2 * 4096 * 1024


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("seq", [2048, 8192])
def test_training_flops_are_six_n_plus_attention(name: str, seq: int) -> None:
    # 6 FLOPs per matmul parameter per token (fwd 2 + bwd 4) plus attention scores and
    # their use: 12 L h s. The input embedding is a gather, not a matmul: leave it out.
    m = load_model(name)
    matmul_params = m.num_params - m.embedding_params
    if m.tie_embeddings:
        matmul_params += m.embedding_params  # the output head still multiplies by it
    expected = 6 * matmul_params + 12 * m.num_layers * m.hidden_size * seq
    # The only gap is the norms' weights (2 h per layer), counted as parameters, not matmuls.
    assert m.training_flops_per_token(seq) == pytest.approx(expected, rel=1e-4)


def test_gpt3_flops_against_megatron_per_iteration_formula() -> None:
    m = load_model("gpt3-175b")
    B, s, L, h, V = 8, 2048, m.num_layers, m.hidden_size, m.vocab_size
    ours = m.training_flops_per_token(s) * B * s
    # Exact Megatron accounting without recompute: 72 B s L h^2 (1 + s/(6h)) for the blocks
    # (24 h^2 + 4 s h per token forward, x3) plus 6 B s h V for the logits (2 s h V x3).
    exact = 72 * B * s * L * h**2 * (1 + s / (6 * h)) + 6 * B * s * h * V
    assert ours == pytest.approx(exact, rel=1e-9)
    # The quoted closed form 72 B s L h^2 (1 + s/(6h) + V/(16 L h)) is the 96-coefficient
    # (recompute) form scaled by 3/4, which also scales its logit term (4.5 instead of 6):
    # a 0.1 % difference at GPT-3 scale.
    quoted = 72 * B * s * L * h**2 * (1 + s / (6 * h) + V / (16 * L * h))
    assert ours == pytest.approx(quoted, rel=0.01)
    assert ours > quoted


def test_model_dict_round_trip() -> None:
    for m in PRESETS.values():
        assert ModelSpec.from_dict(m.to_dict()) == m


def test_preset_names_ignore_case() -> None:
    assert load_model(" Llama3-70B ") is PRESETS["llama3-70b"]


# ---- Hugging Face config.json ---------------------------------------------------------------

LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vocab_size": 32000,
}


def _config(tmp_path: Path, data: object, name: str = "config.json") -> Path:
    folder = tmp_path / "Llama-2-7b-hf"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def test_hf_llama_config_equals_the_preset(tmp_path: Path) -> None:
    path = _config(tmp_path, LLAMA2_7B_CONFIG)
    m = load_model(str(path))
    assert m.name == "Llama-2-7b-hf"  # the folder's name for a file called config.json
    assert m.to_dict() | {"name": "llama2-7b"} == PRESETS["llama2-7b"].to_dict()
    assert load_model(str(path.parent)) == m  # a model folder works too


def test_hf_config_gqa_default_tied_and_gelu(tmp_path: Path) -> None:
    data = {k: v for k, v in LLAMA2_7B_CONFIG.items() if k != "num_key_value_heads"}
    data |= {"hidden_act": "gelu", "tie_word_embeddings": True}
    m = model_from_hf_config(_config(tmp_path, data, "neox.json"))
    assert m.name == "neox"
    assert m.num_kv_heads == 32  # absent = multi-head attention
    assert m.mlp == "gelu" and m.tie_embeddings
    assert m.mlp_params == 2 * 4096 * 11008


@pytest.mark.parametrize(
    ("data", "key", "rule"),
    [
        ({k: v for k, v in LLAMA2_7B_CONFIG.items() if k != "num_hidden_layers"},
         "num_hidden_layers", "required"),
        (LLAMA2_7B_CONFIG | {"hidden_size": 4100}, "hidden_size", "divisible"),
        (LLAMA2_7B_CONFIG | {"num_key_value_heads": 5}, "num_key_value_heads", "divide"),
        (LLAMA2_7B_CONFIG | {"vocab_size": 0}, "vocab_size", "greater than 0"),
        (LLAMA2_7B_CONFIG | {"intermediate_size": "big"}, "intermediate_size", "integer"),
    ],
)  # fmt: skip
def test_hf_config_errors_name_file_and_key(
    tmp_path: Path, data: dict, key: str, rule: str
) -> None:
    path = _config(tmp_path, data)
    with pytest.raises(SpecError, match=rule) as info:
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


def test_unknown_model_lists_presets(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_model("llama4-9000b")
    msg = str(info.value)
    assert "llama4-9000b" in msg and "llama3-70b" in msg and "config.json" in msg
    with pytest.raises(SpecError):
        load_model(str(tmp_path))  # a folder without config.json


# ---- training job ---------------------------------------------------------------------------


def test_job_defaults_and_round_trip() -> None:
    job = TrainingJob(global_batch=64, seq_len=4096)
    assert job.precision == "bf16" and job.optimizer == "adamw"
    assert job.allow_recompute and job.allow_zero1
    assert job.tokens_per_step == 64 * 4096
    assert TrainingJob.from_dict(job.to_dict()) == job


@pytest.mark.parametrize(
    ("kw", "rule"),
    [
        ({"global_batch": 0, "seq_len": 1}, "global batch"),
        ({"global_batch": 1, "seq_len": -5}, "sequence length"),
        ({"global_batch": 1, "seq_len": 1, "precision": "fp8"}, "fp32, tf32, bf16, fp16"),
    ],
)
def test_job_rejects_bad_values(kw: dict, rule: str) -> None:
    with pytest.raises(PolychipError, match=rule):
        TrainingJob(**kw)
