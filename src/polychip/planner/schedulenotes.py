"""The schedule step's notes: what was chosen and why, with figures -- its bubble and memory
beside the same replicas under 1F1B, its gain over the best 1F1B plan, and why each other
option lost or could not run (docs/planner.md, "Schedules")."""

from __future__ import annotations

from collections.abc import Sequence

from polychip.costmodel import CostModel, PlanCost
from polychip.planner.schedules import GIB, Option, Verdict
from polychip.planner.scoring import Scored


def schedule_notes(chosen: Scored, verdicts: Sequence[Verdict], cm: CostModel) -> list[str]:
    """What was chosen and why: its bubble and memory beside the same replicas under 1F1B,
    its gain over the best 1F1B candidate, and why each other option lost or could not run."""
    label = Option(chosen.schedule, chosen.virtual_stages).label
    head = f"schedule {label}"
    if label != "1f1b":
        same = cm.evaluate(chosen.replicas, "1f1b", chosen.zero1)
        head += (f": bubble {same.bubble_fraction:.0%} (1F1B) -> "
                 f"{chosen.cost.bubble_fraction:.0%}, {_memory_change(cm, same, chosen)}"
                 f"{_recompute(chosen)}")
        base = next((v.best for v in verdicts if v.option == Option("1f1b")), None)
        if base is not None:
            gain = chosen.tokens_per_s / base.tokens_per_s - 1
            head += f"; {gain:+.1%} tokens/s over the best 1F1B plan"
    elif len(verdicts) > 1:
        head += f": the fastest of the {len(verdicts)} schedules tried"
    out = [head]
    for v in verdicts:
        if v.best is None:
            out.append(f"{v.option.label} rejected: {v.reason}")
        elif v.option.label != label:
            out.append(f"{v.option.label}: {v.best.tokens_per_s:,.0f} tokens/s "
                       f"({v.best.tokens_per_s / chosen.tokens_per_s - 1:+.1%}), bubble "
                       f"{v.best.cost.bubble_fraction:.0%}{_recompute(v.best)}")
    return out


def _recompute(scored: Scored) -> str:
    """", recompute on k of n stages" when some stage recomputes its activations."""
    stages = [st for r in scored.replicas for st in r.stages]
    k = sum(st.recompute for st in stages)
    return f", recompute on {k} of {len(stages)} stages" if k else ""


def _memory_change(cm: CostModel, base: PlanCost, chosen: Scored) -> str:
    """How much more the first stage and the device that grows most hold than under 1F1B."""
    grow = {k: chosen.cost.memory[k].total - m.total for k, m in base.memory.items()}
    first = max(g for (_, si), g in grow.items() if si == 0)
    (ri, si), most = max(grow.items(), key=lambda kv: kv[1])
    text = f"memory {first / GIB:+.1f} GiB on the first stage"
    if most > first + GIB / 20:
        chip = chosen.replicas[ri].stages[si].chip
        text += f", {most / GIB:+.1f} GiB at most (replica {ri} stage {si}, {chip})"
    return text
