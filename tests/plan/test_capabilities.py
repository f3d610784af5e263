"""The capability table: which features of a plan polychip's runtime lacks, by field."""

from __future__ import annotations

import dataclasses

import pytest
from tests.runtime.plans import cpu_test_cluster, pp_plan

from polychip.plan.capabilities import RUNTIME, Capabilities, missing_features
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob

EVERYTHING = Capabilities(
    precisions=frozenset({"fp32", "tf32", "bf16", "fp16"}),
    attention=frozenset({"fused", "eager"}),
    sequence_parallel=frozenset({False, True}),
    vocab_parallel=frozenset({False, True}),
    overlap_p2p=frozenset({False, True}),
    overlap_grad_sync=frozenset({False, True}),
    grad_reduce_dtypes=frozenset({"fp32", "bf16", "fp16"}),
    zero_stages=frozenset({0, 1}),
    schedules=frozenset({"1f1b", "gpipe", "interleaved-1f1b"}),
    recompute=frozenset({False, True}),
    model_families=frozenset({"llama"}),
    mlp=frozenset({"swiglu"}),
    tied_embeddings_across_stages=True,
    empty_stages=True,
)


def _tp_pipeline(**job):
    plan = pp_plan(cpu_test_cluster(), [([(0, 1, 0, (0, 1), "cpu-slow"),
                                          (1, 2, 1, (0,), "cpu-fast")], 4, 2)])
    return dataclasses.replace(plan, job=dataclasses.replace(plan.job, **job))


def test_a_table_with_everything_misses_nothing():
    assert missing_features(_tp_pipeline(), EVERYTHING) == []


@pytest.mark.parametrize(("field", "job", "caps"), [
    ("job.precision", {"precision": "fp16"}, {"precisions": frozenset({"bf16"})}),
    ("job.attention", {"attention": "eager"}, {"attention": frozenset({"fused"})}),
    ("job.sequence_parallel", {"sequence_parallel": True},
     {"sequence_parallel": frozenset({False})}),
    ("job.vocab_parallel", {"vocab_parallel": True}, {"vocab_parallel": frozenset({False})}),
    ("job.grad_reduce_dtype", {"grad_reduce_dtype": "bf16"},
     {"grad_reduce_dtypes": frozenset({"fp32"})}),
])
def test_each_missing_job_feature_is_named_with_its_fix(field, job, caps):
    missing = missing_features(_tp_pipeline(**job), dataclasses.replace(EVERYTHING, **caps))
    assert [m.field for m in missing] == [field]
    assert "set " in missing[0].fix and field in str(missing[0])


def test_sequence_parallelism_is_not_asked_for_without_tp():
    plan = pp_plan(cpu_test_cluster(), [([(0, 2, 1, (0,), "cpu-fast")], 4, 2)])
    caps = dataclasses.replace(EVERYTHING, sequence_parallel=frozenset({False}),
                               vocab_parallel=frozenset({False}))
    assert missing_features(plan, caps) == []


def test_zero1_and_recompute_are_named_by_their_fields():
    plan = _tp_pipeline()
    stages = (dataclasses.replace(plan.replicas[0].stages[0], recompute=True),
              plan.replicas[0].stages[1])
    plan = dataclasses.replace(plan, zero1=True, replicas=(
        dataclasses.replace(plan.replicas[0], stages=stages),))
    caps = dataclasses.replace(EVERYTHING, zero_stages=frozenset({0}),
                               recompute=frozenset({False}))
    assert [m.field for m in missing_features(plan, caps)] == [
        "zero1", "replicas[0].stages[0].recompute"]


def test_the_runtime_table_is_a_table_of_real_choices():
    assert "1f1b" in RUNTIME.schedules and "llama" in RUNTIME.model_families


def test_job_refuses_unknown_run_settings():
    with pytest.raises(PolychipError, match="attention"):
        TrainingJob(8, 64, attention="sparse")  # type: ignore[arg-type]
    with pytest.raises(PolychipError, match="grad_reduce_dtype"):
        TrainingJob(8, 64, grad_reduce_dtype="int8")  # type: ignore[arg-type]
    assert TrainingJob(8, 64, precision="fp32").compute_bytes == 4


def _with_model(plan, name: str):
    from polychip.spec.model import load_model

    spec = load_model(name)
    # keep the plan's tiny sizes (its TP degrees divide them); take the family's block
    block = {k: v for k, v in spec.to_dict().items() if k not in (
        "name", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size",
        "vocab_size", "max_positions", "embed_proj_dim")}
    if spec.position == "learned":
        block["max_positions"] = plan.job.seq_len
    model = dataclasses.replace(plan.model, **block)
    return dataclasses.replace(plan, model=model)


@pytest.mark.parametrize(("name", "fields"), [
    ("llama2-7b", []),
    ("llama3-8b", []),
    ("mistral-7b", []),
    ("qwen2-7b", []),
    ("gpt2", ["model.family", "model.mlp", "model.norm", "model.position",
              "model.attn_out_bias", "model.mlp_bias"]),
])
def test_the_runtime_trains_the_llama_families_only(name, fields):
    plan = _with_model(_tp_pipeline(), name)
    model_caps = ("model_families", "mlp", "norms", "positions", "qkv_bias", "linear_biases",
                  "rope_scaling", "windowed_attention")
    caps = dataclasses.replace(EVERYTHING, **{k: getattr(RUNTIME, k) for k in model_caps})
    missing = missing_features(plan, caps)
    assert [m.field for m in missing] == fields
    if fields:
        assert str(missing[0]).startswith(f"model.family = {plan.model.family}: not executed")
    without_biases = dataclasses.replace(caps, qkv_bias=False)
    assert ("model.qkv_bias" in {m.field for m in missing_features(plan, without_biases)}
            ) == plan.model.qkv_bias


def _with(plan, **model):
    return dataclasses.replace(plan, model=dataclasses.replace(plan.model, **model))


def test_a_sliding_window_shorter_than_the_sequence_is_refused():
    plan = _with_model(_tp_pipeline(), "mistral-7b")  # seq_len 8
    assert missing_features(_with(plan, sliding_window=8)) == []  # never binds
    (missing,) = missing_features(_with(plan, sliding_window=4))
    assert missing.field == "model.sliding_window" and "job.seq_len <= 4" in str(missing)


def test_rescaled_rotary_frequencies_are_refused():
    plan = _with_model(_tp_pipeline(), "llama3-8b")
    (missing,) = missing_features(_with(plan, rope_scaling="llama3"))
    assert (missing.field, missing.value) == ("model.rope_scaling", "llama3")
