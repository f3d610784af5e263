"""Notes: what limits the plan, in words, from the cost model's own breakdown."""

from __future__ import annotations

from polychip.costmodel import CostModel
from polychip.costmodel.comm import LinkKind
from polychip.plan.plan import Plan
from polychip.planner.scoring import Scored

IDEAL_TARGET = 0.90
GIB = 1024**3


def plan_notes(plan: Plan, best: Scored, cm: CostModel, exhaustive: bool) -> list[str]:
    cost, est = best.cost, plan.estimate
    assert est is not None and plan.ideal is not None
    notes = []
    step = cost.step_time_s
    share = {
        "pipeline": cost.pipeline_s / step,
        "sync": cost.dp_sync_s / step,
        "opt": cost.optimizer_s / step,
    }
    notes.append(
        f"{'exhaustive' if exhaustive else 'fast'} search; step {step:.3f} s = pipeline "
        f"{cost.pipeline_s:.3f} s (bubble {cost.bubble_fraction:.0%}) + gradient sync "
        f"{cost.dp_sync_s:.3f} s + optimizer {cost.optimizer_s:.3f} s"
    )
    ideal = plan.ideal.tokens_per_s
    ratio = cost.tokens_per_s / ideal if ideal > 0 else 0.0
    limits = _limits(plan, best, cm, share)
    if ideal <= 0:
        notes.append("no chip type can train the model alone: the ideal (each type alone) is 0")
    elif ratio < IDEAL_TARGET:
        why = "; ".join(limits) if limits else "pipeline bubbles and uneven integer splits"
        notes.append(f"ratio to ideal {ratio:.2f} < {IDEAL_TARGET:.2f}: {why}")
    else:
        notes.extend(limits)
        if ratio > 1.0:
            notes.append(
                f"ratio to ideal {ratio:.2f} > 1: the ideal runs each chip type alone; mixed, a "
                "type can use layouts it cannot alone (the other type's memory lets it drop "
                "recompute or stages, fewer replicas shrink gradient sync)"
            )
    used = {(s.node, d) for r in plan.replicas for s in r.stages for d in s.local_devices}
    for g in plan.cluster.groups:
        first = plan.cluster.first_node(g)
        idle = sum(
            1
            for n in range(first, first + g.num_nodes)
            for d in range(g.chips_per_node)
            if (n, d) not in used
        )
        if idle:
            reason = (
                "the global batch has fewer sequences than replicas could use them"
                if len(plan.replicas) >= plan.job.global_batch
                else "more replicas would cost more in gradient sync or bubbles than they add"
            )
            notes.append(
                f"{idle} of {g.num_devices} {g.chip.name} chips ({g.label}) left idle: {reason}"
            )
    if plan.zero1:
        notes.append(f"ZeRO-1: optimizer state sharded over {len(plan.replicas)} replicas")
    naive = plan.baselines.get("naive_mixed")
    if naive is not None and not naive.feasible:
        notes.append("naive mixed baseline: " + naive.description)
    return notes


def _limits(plan: Plan, best: Scored, cm: CostModel, share: dict[str, float]) -> list[str]:
    out = []
    cost = best.cost
    if share["sync"] >= 0.05:
        islands = sorted({cm.chip(s.chip).island for r in plan.replicas for s in r.stages})
        bound = cm.under(plan.replicas)
        nics = sorted({bound.device_nic_bw(s.node) for r in plan.replicas for s in r.stages})
        where = (
            f"across islands {', '.join(islands)} through host memory "
            f"({plan.cluster.network.host_copy_bw_bytes_per_s / 1e9:.0f} GB/s host copies)"
            if len(islands) > 1
            else f"inside island {islands[0]}"
        )
        out.append(
            f"gradient sync is {share['sync']:.0%} of the step: {len(plan.replicas)} replicas "
            f"all-reduce gradients {where}, slowest NIC share {nics[0] * 8 / 1e9:.0f} Gb/s per chip"
        )
    if cost.bubble_fraction >= 0.10:
        out.append(
            f"pipeline bubble {cost.bubble_fraction:.0%}: few micro-batches per replica for its "
            f"stages (global batch {plan.job.global_batch}) or uneven stage times"
        )
    bridges = []
    for r in plan.replicas:
        for i in range(r.num_stages - 1):
            kind = cm.link(r.stages[i].node, r.stages[i + 1].node)[0]
            if kind is LinkKind.BRIDGE:
                t = cm.boundary_time_s(r, i)
                stage = max(cm.times_of(r, j).total_s for j in range(r.num_stages))
                bridges.append((t, stage))
    if bridges:
        t, stage = max(bridges)
        if t > 0.1 * stage:
            out.append(
                f"activations cross islands through host memory: {t * 1e3:.1f} ms per "
                f"micro-batch vs {stage * 1e3:.1f} ms for the slowest stage"
            )
    recompute = sorted({s.chip for r in plan.replicas for s in r.stages if s.recompute})
    if recompute:
        caps = ", ".join(f"{c} {cm.chip(c).memory_bytes / GIB:.0f} GiB" for c in recompute)
        out.append(
            f"memory: stages on {caps} recompute activations (they do not fit otherwise), "
            "one extra forward per micro-batch"
        )
    return out
