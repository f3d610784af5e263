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

from dataclasses import dataclass

from polychip.plan.plan import Plan


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


RUNTIME = Capabilities(
    precisions=frozenset({"fp32", "tf32", "bf16", "fp16"}),
    attention=frozenset({"fused"}),
    sequence_parallel=frozenset({False}),
    vocab_parallel=frozenset({False}),
    overlap_p2p=frozenset({True}),
    overlap_grad_sync=frozenset({False, True}),
    grad_reduce_dtypes=frozenset({"fp32", "bf16", "fp16"}),
    zero_stages=frozenset({0, 1}),
    schedules=frozenset({"1f1b", "gpipe", "interleaved-1f1b"}),
    recompute=frozenset({False, True}),
    model_families=frozenset({"llama"}),
    mlp=frozenset({"swiglu"}),
    tied_embeddings_across_stages=False,
    empty_stages=False,
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
    family = getattr(model, "family", "llama")
    if family not in caps.model_families:
        out.append(MissingFeature(
            "model.family", family,
            f"the runtime's transformer is one of: {_choices(caps.model_families)}; plan such "
            f"a model to train it (other families can be estimated, not trained)"))
    if model.mlp not in caps.mlp:
        out.append(MissingFeature("model.mlp", model.mlp,
                                  f"train a model with an MLP of: {_choices(caps.mlp)}"))
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
