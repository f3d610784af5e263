"""What polychip's runtime can execute: one table, read by the planner (it emits only plans
the runtime can run) and by the runtime (it refuses any other before a process group starts).

A plan asks for a feature through its job (`precision`, `attention`, `sequence_parallel`,
`vocab_parallel`, `overlap_p2p`, `overlap_grad_sync`, `grad_reduce_dtype`), its own fields
(`schedule`, `zero1`) and its stages (`recompute`, blocks per stage, TP degree). A feature
that does not apply to a plan (sequence parallelism without TP) is not asked for.
`missing_features(plan)` lists, for each feature the runtime lacks, the field, the value
and the fix; an empty list means the runtime can execute every feature the plan asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from polychip.plan.plan import Plan
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec


@dataclass(frozen=True)
class Capabilities:
    precisions: frozenset[str]
    attention: frozenset[str]
    sequence_parallel: frozenset[bool]  # values runnable when a stage has TP > 1
    vocab_parallel: frozenset[bool]  # values runnable when a first/last stage has TP > 1
    overlap_p2p: frozenset[bool]
    overlap_grad_sync: frozenset[bool]
    grad_reduce_dtypes: frozenset[str]
    zero_stages: frozenset[int]  # 0: replicated optimizer state; 1: ZeRO-1
    schedules: frozenset[str]
    recompute: frozenset[bool]  # full activation recompute of a stage's blocks
    model_families: frozenset[str]
    mlp: frozenset[str]
    tied_embeddings_across_stages: bool  # a tied head on another stage than the embedding
    empty_stages: bool  # a stage with no transformer block (only the embedding or the head)
    norms: frozenset[str] = frozenset({"rmsnorm"})
    positions: frozenset[str] = frozenset({"rope"})
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    linear_biases: bool = False  # biases on the attention-out or MLP matrices
    rope_scaling: bool = False  # rescaled rotary frequencies (Llama 3.1's, YaRN, ...)
    windowed_attention: bool = False  # a sliding window shorter than the sequence (Mistral)


RUNTIME = Capabilities(
    precisions=frozenset({"fp32", "tf32", "bf16", "fp16"}),
    attention=frozenset({"fused"}),
    sequence_parallel=frozenset({False, True}),
    vocab_parallel=frozenset({False, True}),
    overlap_p2p=frozenset({True}),
    overlap_grad_sync=frozenset({False, True}),
    grad_reduce_dtypes=frozenset({"fp32", "bf16", "fp16"}),
    zero_stages=frozenset({0, 1}),
    schedules=frozenset({"1f1b", "gpipe", "interleaved-1f1b", "zb-h1"}),
    recompute=frozenset({False, True}),
    # Mistral's block is Llama's while its sliding window does not bind (no windowed
    # attention: a window shorter than the sequence is refused); Qwen2's adds q/k/v biases.
    model_families=frozenset({"llama", "mistral", "qwen2"}),
    qkv_bias=True,
    mlp=frozenset({"swiglu"}),
    tied_embeddings_across_stages=False,
    empty_stages=True,
)
"""polychip's runtime, as executed today. Each entry changes with the runtime code that
implements it, in the same commit."""


@dataclass(frozen=True)
class MissingFeature:
    field: str  # where the plan asks for it (`job.precision`, `zero1`, `replicas[0].stages[1]`)
    value: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value}: not executed by polychip's runtime; {self.fix}"


def _choices(values: frozenset) -> str:
    return ", ".join(sorted(str(v).lower() for v in values)) or "none"


def _job_features(plan: Plan, caps: Capabilities) -> list[MissingFeature]:
    job, out = plan.job, []
    tp_any = any(st.tp > 1 for r in plan.replicas for st in r.stages)
    tp_ends = any(r.stages[i].tp > 1 for r in plan.replicas for i in (0, -1))
    checks = [
        ("job.precision", job.precision, caps.precisions, True),
        ("job.attention", job.attention, caps.attention, True),
        ("job.sequence_parallel", job.sequence_parallel, caps.sequence_parallel, tp_any),
        ("job.vocab_parallel", job.vocab_parallel, caps.vocab_parallel, tp_ends),
        ("job.overlap_p2p", job.overlap_p2p, caps.overlap_p2p, True),
        ("job.overlap_grad_sync", job.overlap_grad_sync, caps.overlap_grad_sync, True),
        ("job.grad_reduce_dtype", job.grad_reduce_dtype, caps.grad_reduce_dtypes, True),
        ("schedule", plan.schedule, caps.schedules, True),
        ("zero1", int(plan.zero1), caps.zero_stages, True),
    ]
    for field, value, allowed, applies in checks:
        if applies and value not in allowed:
            shown = str(value).lower() if field != "zero1" else str(bool(value)).lower()
            if field == "zero1":
                fix = "set zero1 to false (optimizer state replicated)"
            else:
                fix = f"set {field} to one of: {_choices(allowed)}"
            out.append(MissingFeature(field, shown, fix))
    return out


def _model_features(plan: Plan, caps: Capabilities) -> list[MissingFeature]:
    model, out = plan.model, []
    biases = [k for k in ("qkv_bias", "attn_out_bias", "mlp_bias") if getattr(model, k)]
    checks = [
        ("model.family", model.family, caps.model_families,
         "the runtime's transformer is one of: {}; plan such a model to train it (other "
         "families can be estimated, not trained)"),
        ("model.mlp", model.mlp, caps.mlp, "train a model with an MLP of: {}"),
        ("model.norm", model.norm, caps.norms, "train a model whose norm is one of: {}"),
        ("model.position", model.position, caps.positions,
         "train a model whose positions are one of: {}"),
    ]  # fmt: skip
    for field, value, allowed, fix in checks:
        if value not in allowed:
            out.append(MissingFeature(field, value, fix.format(_choices(allowed))))
    has = "the q/k/v projections only" if caps.qkv_bias else "no matrix"
    out += [MissingFeature(f"model.{b}", "true", f"train a model without this bias (the "
                           f"runtime's blocks have biases on {has})")
            for b in biases if not (caps.qkv_bias if b == "qkv_bias" else caps.linear_biases)]
    if model.rope_scaling and not caps.rope_scaling:
        out.append(MissingFeature("model.rope_scaling", model.rope_scaling,
                                  "train a model with plain rotary frequencies (rope_type "
                                  "default); rescaled ones are estimated, not trained"))
    window, seq_len = model.sliding_window, plan.job.seq_len
    if window and window < seq_len and not caps.windowed_attention:
        out.append(MissingFeature(
            "model.sliding_window", str(window),
            f"train with job.seq_len <= {window} (the window then never binds; now "
            f"{seq_len}), or a model without a window: the runtime has no windowed attention"))
    pipelined = any(r.num_stages > 1 for r in plan.replicas)
    if model.tie_embeddings and pipelined and not caps.tied_embeddings_across_stages:
        out.append(MissingFeature(
            "model.tie_embeddings", "true",
            "plan one stage per replica, or untie the embeddings (the head's copy of a tied "
            "embedding on another stage is not kept equal)"))
    return out


def _stage_features(plan: Plan, caps: Capabilities) -> list[MissingFeature]:
    out = []
    for ri, rep in enumerate(plan.replicas):
        for si, st in enumerate(rep.stages):
            where = f"replicas[{ri}].stages[{si}]"
            if st.recompute not in caps.recompute:
                out.append(MissingFeature(f"{where}.recompute", str(st.recompute).lower(),
                                          "set recompute to false"))
            if st.num_layers == 0 and not caps.empty_stages:
                out.append(MissingFeature(f"{where}.layers", "[]",
                                          "give every stage at least one transformer block"))
    return out


def missing_features(plan: Plan, caps: Capabilities = RUNTIME) -> list[MissingFeature]:
    """Every feature `plan` asks for that `caps` lacks (empty: the runtime can run it)."""
    return [*_job_features(plan, caps), *_model_features(plan, caps),
            *_stage_features(plan, caps)]


def tp_problems(model: ModelSpec, job: TrainingJob, tp: int) -> list[str]:
    """Why a stage of TP degree `tp` cannot run this model and job (empty: it can): every TP
    rank holds an equal share of the heads, key/value heads and FFN width, and under
    sequence parallelism an equal part of every sequence. The planner offers only degrees
    with no problem; the runtime refuses a stage that has one."""
    out = [
        f"tensor-parallel degree {tp} does not divide the model's {what}={size}: use a TP "
        f"degree that divides num_heads, num_kv_heads and ffn_hidden_size"
        for what, size in (("num_heads", model.num_heads), ("num_kv_heads", model.num_kv_heads),
                           ("ffn_hidden_size", model.ffn_hidden_size))
        if size % tp
    ]
    if job.sequence_parallel and tp > 1 and job.seq_len % tp:
        out.append(
            f"tensor-parallel degree {tp} with job.sequence_parallel on: each TP rank holds an "
            f"equal part of every sequence, and {tp} does not divide job.seq_len={job.seq_len}; "
            f"use a sequence length divisible by {tp}, a TP degree that divides {job.seq_len}, "
            f"or set job.sequence_parallel to false")
    return out


def planner_job(job: TrainingJob, caps: Capabilities = RUNTIME) -> tuple[TrainingJob, list[str]]:
    """The job the planner searches: its own choices (ZeRO-1, recompute) limited to what
    `caps` executes, and a note for each choice the job allowed that `caps` takes away."""
    notes = []
    zero1 = job.allow_zero1 and 1 in caps.zero_stages
    recompute = job.allow_recompute and True in caps.recompute
    if job.allow_zero1 and not zero1:
        notes.append("ZeRO-1 not considered: polychip's runtime does not execute it")
    if job.allow_recompute and not recompute:
        notes.append("activation recompute not considered: polychip's runtime does not run it")
    return replace(job, allow_zero1=zero1, allow_recompute=recompute), notes
