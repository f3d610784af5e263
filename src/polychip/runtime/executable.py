"""Can the runtime execute a plan? Checked before any process starts (`polychip train`,
`polychip train --check`, and :func:`polychip.runtime.topology.rank_roles`, which every rank
calls before it joins a process group).

The capability table (:mod:`polychip.plan.capabilities`) says what the runtime executes;
:func:`executable_problems` lists each feature a plan asks for that a table lacks, and what
no table lists (a TP degree that does not divide the heads), each naming the field and the
fix.
"""

from __future__ import annotations

from polychip.plan.capabilities import RUNTIME, Capabilities, missing_features, tp_problems
from polychip.plan.plan import Plan
from polychip.runtime.errors import RuntimeSetupError


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
    """Refuse what the runtime cannot execute (``caps``; default the runtime's table),
    rather than run something else: before any process group starts."""
    problems = executable_problems(plan, caps or RUNTIME)
    if problems:
        raise RuntimeSetupError("the runtime cannot execute this plan: " + "; ".join(problems))
