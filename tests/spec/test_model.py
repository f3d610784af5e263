"""Model shapes against published parameter counts and the field's FLOP and activation
formulas (docs/references.md), and the training job. Reading Hugging Face config.json files:
test_hf_config.py."""

from __future__ import annotations

import pytest

from polychip.spec.errors import PolychipError, SpecError
from polychip.spec.job import TrainingJob
from polychip.spec.model import PRESETS, ModelSpec, load_model

# Parameters of the released checkpoints: the sum of their tensors' sizes (what
# transformers' `num_parameters()` reports; model cards round them: 124M, 355M, 774M,
# 1.5B, 125m, 350m, 1.3b, 7B). Tolerance: none -- every tensor is counted.
CHECKPOINTS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "opt-125m": 125_239_296,
    "opt-350m": 331_196_416,
    "opt-1.3b": 1_315_758_080,
    "llama2-7b": 6_738_415_616,
    "mistral-7b": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
}
# Rounded totals from model cards and papers: within 2 %.
PUBLISHED = {
    "llama2-13b": 13.0e9,
    "llama2-70b": 69.0e9,
    "llama3-8b": 8.03e9,
    "llama3-70b": 70.6e9,
    "qwen2-72b": 72.7e9,
    "gpt3-175b": 175e9,
}


def test_every_issue_preset_exists() -> None:
    assert set(PUBLISHED) | set(CHECKPOINTS) | {"tiny"} <= set(PRESETS)


@pytest.mark.parametrize(("name", "count"), CHECKPOINTS.items())
def test_parameter_count_equals_the_checkpoints(name: str, count: int) -> None:
    assert load_model(name).num_params == count


@pytest.mark.parametrize(("name", "published"), PUBLISHED.items())
def test_parameter_count_matches_published(name: str, published: float) -> None:
    assert load_model(name).num_params == pytest.approx(published, rel=0.02)


def test_gpt2_parameters_by_hand() -> None:
    # Per block: c_attn 3h^2 + 3h, c_proj h^2 + h, c_fc 4h^2 + 4h, mlp c_proj 4h^2 + h,
    # two LayerNorms 2 x 2h; then wte V h, wpe 1024 h, ln_f 2h; the head is tied.
    m, h, V = load_model("gpt2"), 768, 50257
    block = 12 * h * h + 13 * h
    assert m.layer_params == block
    assert m.embedding_params == V * h + 1024 * h
    assert m.head_params == 2 * h
    assert m.num_params == 12 * block + V * h + 1024 * h + 2 * h


def test_opt_350m_projects_a_narrow_embedding() -> None:
    # 512-wide tokens, project_in 512 -> 1024 and project_out 1024 -> 512 (no biases),
    # 2048 + 2 learned positions of width 1024, no final LayerNorm (post-norm blocks).
    m = load_model("opt-350m")
    assert m.embed_dim == 512 and m.projected_embedding
    assert m.embedding_params == 50272 * 512 + 2050 * 1024 + 512 * 1024
    assert m.head_params == 1024 * 512  # project_out; the vocabulary matrix is tied
    assert m.output_embedding_params == 50272 * 512
    assert m.head_flops_per_token() == 2 * (50272 * 512 + 1024 * 512)
    assert m.embedding_flops_per_token() == 2 * 512 * 1024
    assert load_model("opt-125m").embedding_flops_per_token() == 0  # no projection


def test_qwen2_biases_only_on_q_k_v() -> None:
    m = load_model("qwen2-7b")  # 28 heads, 4 kv heads of 128
    assert m.attn_params - m.attn_weight_params == 3584 + 2 * 512
    assert m.mlp_params == m.mlp_weight_params
    assert m.layer_matmul_params == m.attn_weight_params + m.mlp_weight_params


def test_gpt3_parameters_match_megatron_formula() -> None:
    # Narayanan et al. 2021: P = 12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h)): 13 h per
    # block of biases and LayerNorms, learned positions (s = 2048), the head tied. It
    # leaves out the final LayerNorm (2 h).
    m = load_model("gpt3-175b")
    L, h, V, s = m.num_layers, m.hidden_size, m.vocab_size, 2048
    megatron = 12 * L * h**2 * (1 + 13 / (12 * h) + (V + s) / (12 * L * h))
    assert m.num_params == pytest.approx(megatron + 2 * h, rel=1e-12)
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


@pytest.mark.parametrize("name", sorted(PUBLISHED | CHECKPOINTS))
@pytest.mark.parametrize("seq", [1024, 8192])
def test_training_flops_are_six_n_plus_attention(name: str, seq: int) -> None:
    # 6 FLOPs per matmul weight per token (fwd 2 + bwd 4) plus attention scores and their
    # use, 12 L h s. The input embedding and positions are gathers, not matmuls; biases
    # and norms are adds: none of them counts.
    m = load_model(name)
    matmul = m.num_layers * m.layer_matmul_params + m.output_embedding_params
    matmul += 2 * m.projection_params  # OPT-350m's project_in and project_out
    expected = 6 * matmul + 12 * m.num_layers * m.hidden_size * seq
    assert m.training_flops_per_token(seq) == pytest.approx(expected, rel=1e-12)
    # ... which is 6 N + attention up to the parameters that are not matmul weights
    assert m.training_flops_per_token(seq) == pytest.approx(
        6 * m.num_params + 12 * m.num_layers * m.hidden_size * seq, rel=0.15
    )


def test_a_sliding_window_bounds_the_attention_flops() -> None:
    full = load_model("mistral-7b")
    windowed = ModelSpec(**full.to_dict() | {"sliding_window": 4096})
    assert windowed.attention_keys(2048) == 2048 and windowed.attention_keys(32768) == 4096
    assert windowed.layer_flops_per_token(2048) == full.layer_flops_per_token(2048)
    gap = full.layer_flops_per_token(32768) - windowed.layer_flops_per_token(32768)
    assert gap == 4 * (32768 - 4096) * 4096
    assert windowed.num_params == full.num_params


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


def test_old_fields_only_mean_a_llama_block() -> None:
    old = {
        "name": "x",
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "hidden_size": 64,
        "ffn_hidden_size": 176,
        "vocab_size": 256,
        "mlp": "swiglu",
        "tie_embeddings": False,
    }
    m = ModelSpec.from_dict(old)
    assert (m.family, m.norm, m.position, m.activation) == ("llama", "rmsnorm", "rope", "silu")
    assert not (m.qkv_bias or m.attn_out_bias or m.mlp_bias or m.embed_proj_dim)
    assert ModelSpec.from_dict(old | {"mlp": "gelu"}).activation == "gelu"


@pytest.mark.parametrize(
    ("kw", "rule"),
    [
        ({"mlp": "swiglu", "activation": "relu"}, "does not fit a swiglu MLP"),
        ({"mlp": "moe"}, "is not one of"),
        ({"position": "learned"}, "max_positions"),
    ],
)
def test_inconsistent_shapes_are_errors(kw: dict, rule: str) -> None:
    with pytest.raises(PolychipError, match=rule):
        ModelSpec("x", 2, 64, 4, 4, 256, 256, **kw)


def test_learned_positions_cap_the_sequence() -> None:
    load_model("gpt2").check_seq_len(1024)
    with pytest.raises(PolychipError, match="exceeds the 1024 learned positions"):
        load_model("gpt2").check_seq_len(2048)
    load_model("llama2-7b").check_seq_len(10**6)  # rotary: no table to run out of


def test_preset_names_ignore_case() -> None:
    assert load_model(" Llama3-70B ") is PRESETS["llama3-70b"]


# ---- training job ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"hidden_size": 18}, "hidden_size=18 is not divisible by num_heads=4"),
    ({"num_kv_heads": 3}, "num_kv_heads=3"),
    ({"num_layers": 0}, "num_layers=0"),
    ({"vocab_size": -1}, "vocab_size=-1"),
])
def test_a_bad_shape_is_refused_where_the_model_is_made(kwargs: dict, fragment: str) -> None:
    """ModelSpec checks its sizes itself: the one check the cost model, the planner and the
    runtime share."""
    good = {"name": "m", "num_layers": 4, "hidden_size": 16, "num_heads": 4,
            "num_kv_heads": 2, "ffn_hidden_size": 32, "vocab_size": 64}
    ModelSpec(**good)
    with pytest.raises(SpecError, match=fragment):
        ModelSpec(**{**good, **kwargs})


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
