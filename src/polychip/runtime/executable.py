"""Can the runtime execute a plan? Checked before any process starts (`polychip train`,
`polychip train --check`, and :func:`polychip.runtime.topology.rank_roles`, which every rank
calls before it joins a process group).

The capability table (:mod:`polychip.plan.capabilities`) says what the runtime executes;
:func:`executable_problems` lists each feature a plan asks for that a table lacks, and what
no table lists (a TP degree that does not divide the heads), each naming the field and the
fix. Whether the runtime *refuses* a plan for its job's features is one switch,
:data:`ENFORCE_JOB_CAPABILITIES`.
"""

from __future__ import annotations

import dataclasses

from polychip.plan.capabilities import RUNTIME, Capabilities, missing_features, tp_problems
from polychip.plan.plan import Plan
from polychip.runtime.errors import RuntimeSetupError
from polychip.spec.job import ATTENTIONS, PRECISIONS, REDUCE_DTYPES

ENFORCE_JOB_CAPABILITIES = False
"""The switch (one line for the lead to flip at merge time): whether the runtime refuses a
plan whose *job* asks for what it does not execute yet -- precision, attention kernel,
sequence parallelism, vocabulary-parallel head, overlap, reduction dtype, ZeRO-1 -- as
`polychip.plan.capabilities.RUNTIME` says. Off while RUNTIME does not list the job's
defaults (bf16, SP, vocab-parallel, overlapped gradient sync): until then the runtime runs
such a job in the dtype of `--dtype`, without SP, with replicated optimizer state, and
`polychip train --check` reports each such feature. What the runtime cannot run at all (the
model family, the MLP, a tied head on another stage, schedules, recompute, empty stages, a TP
degree that does not divide the heads) is refused either way."""
_JOB_FIELDS = dict(
    precisions=frozenset(PRECISIONS), attention=frozenset(ATTENTIONS),
    sequence_parallel=frozenset({False, True}), vocab_parallel=frozenset({False, True}),
    overlap_p2p=frozenset({False, True}), overlap_grad_sync=frozenset({False, True}),
    grad_reduce_dtypes=frozenset(REDUCE_DTYPES), zero_stages=frozenset({0, 1}))


def enforced_capabilities() -> Capabilities:
    """The table the runtime refuses plans by: RUNTIME, or (switch off) RUNTIME with every
    job-level feature let through."""
    return RUNTIME if ENFORCE_JOB_CAPABILITIES else dataclasses.replace(RUNTIME, **_JOB_FIELDS)


def executable_problems(plan: Plan, caps: Capabilities) -> list[str]:
    """Why the runtime cannot execute ``plan`` under the capability table ``caps`` (each
    naming the field and the fix); empty when it can. Pure: starts nothing."""
    out = [str(m) for m in missing_features(plan, caps)]
    for ri, rep in enumerate(plan.replicas):
        for si, st in enumerate(rep.stages):
            out += [f"replicas[{ri}].stages[{si}]: {why}"
                    for why in tp_problems(plan.model, plan.job, st.tp)]
    return out


def check_executable(plan: Plan, caps: Capabilities | None = None) -> None:
    """Refuse what the runtime cannot execute (``caps``; default :func:`enforced_capabilities`),
    rather than run something else: before any process group starts."""
    problems = executable_problems(plan, caps or enforced_capabilities())
    if problems:
        raise RuntimeSetupError("the runtime cannot execute this plan: " + "; ".join(problems))
