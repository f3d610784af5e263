"""Reference points on the same cost model: the best single chip type, the naive mixed plan
and the ideal. Every figure is `CostModel.evaluate` of a concrete plan.

- best single type: the planner's own search restricted to the node groups of one chip type
  (whole global batch), the best type kept;
- naive mixed: what a homogeneous tool (Megatron-style) makes of the whole cluster: every
  chip, one (TP, PP, DP) for all, layers split evenly, the batch split evenly, ranks laid
  out in node order (TP fastest, then DP or PP); the best such layout that fits;
- ideal: the sum over chip types of what each type achieves alone.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from polychip.costmodel import CostModel
from polychip.costmodel.estimate import PlanCost
from polychip.plan.capabilities import tp_problems
from polychip.plan.naive import even_parts
from polychip.plan.plan import Baseline, Replica, Stage
from polychip.planner.space import micro_batch_sizes
from polychip.spec.cluster import Cluster

if TYPE_CHECKING:
    from polychip.planner.scoring import Scored


@dataclass(frozen=True)
class Naive:
    replicas: tuple[Replica, ...]
    cost: PlanCost
    zero1: bool
    layout: str


def type_groups(cluster: Cluster) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for g in cluster.groups:
        out.setdefault(g.chip.name, []).append(g.index)
    return out


def pipeline_text(replica: Replica) -> str:
    """`2xTP8 h800 -> 4xTP8 ascend-910b`: runs of stages on one chip type and TP."""
    runs: list[list] = []
    for st in replica.stages:
        if runs and runs[-1][1:] == [st.chip, st.tp]:
            runs[-1][0] += 1
        else:
            runs.append([1, st.chip, st.tp])
    return " -> ".join(f"{n}xTP{tp} {chip}" for n, chip, tp in runs)


def describe_replicas(replicas: tuple[Replica, ...]) -> str:
    """`3 x [2xTP8 h800], 1 x [...]`: distinct pipelines with their counts."""
    counts: dict[str, int] = {}
    for r in replicas:
        key = pipeline_text(r)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x [{k}]" for k, n in counts.items())


def naive_mixed(cm: CostModel, schedule: str) -> Naive | None:
    """The best all-chip homogeneous layout (None if none fits memory): every layout's
    quick bound (`_quick_check`: pipeline and optimizer, an upper bound), then layouts
    priced best bound first until no bound left beats the best priced -- the layout that
    pricing each in turn finds (ties: the first in (TP, PP, order, micro-batch) order)."""
    heap = [(-quick, i, args, firsts)
            for i, (quick, args, firsts) in enumerate(_naive_layouts(cm, schedule))]
    heapq.heapify(heap)
    best: Naive | None = None
    best_i = -1
    while heap:
        neg, i, args, firsts = heapq.heappop(heap)
        if best is not None and (-neg, -i) <= (best.cost.tokens_per_s, -best_i):
            break  # exact: gradient sync only adds time
        _, _, tp, pp, dp, order, _, _, mb, recompute = args
        zero1 = cm.job.allow_zero1 and dp > 1
        reps = _layout(*args)
        cost = cm.evaluate(reps, schedule, zero1)
        if not cost.feasible:  # recompute only adds time: tried only when needed
            if cm.job.allow_recompute and not recompute:
                again = (*args[:-1], True)
                quick = _layout_bound(cm, again, firsts, schedule)
                if quick is not None:
                    heapq.heappush(heap, (-quick, i, again, firsts))
            continue
        if best is None or (cost.tokens_per_s, -i) > (best.cost.tokens_per_s, -best_i):
            layout = f"TP{tp} x PP{pp} x DP{dp} ({order}), micro-batch {mb}"
            best, best_i = Naive(reps, cost, zero1, layout + (", recompute" if recompute
                                                              else "")), i
    return best


def _naive_layouts(cm: CostModel, schedule: str) -> list[tuple[float, tuple, list[int]]]:
    """Every all-chip (TP, PP, DP, order, micro-batch) layout that fits memory, in that
    order: its quick bound, `_layout`'s arguments (with recompute where it does not fit
    without) and the replicas the quick check looks at (`_distinct`)."""
    cluster, model, job = cm.cluster, cm.model, cm.job
    devices = [(n.index, slot) for n in cluster.nodes for slot in range(n.group.chips_per_node)]
    chip_of = {n.index: n.group.chip.name for n in cluster.nodes}
    total = len(devices)
    tps = [t for t in (1, 2, 4, 8, 16)
           if all(g.chips_per_node % t == 0 for g in cluster.groups)
           and not tp_problems(model, job, t)]
    out = []
    for tp in tps:
        for pp in range(1, min(model.num_layers, total // tp) + 1):
            if (total // tp) % pp:
                continue
            dp = total // (tp * pp)
            if dp > job.global_batch:
                continue
            layers = even_parts(model.num_layers, pp)
            batches = even_parts(job.global_batch, dp)
            for order in ("tp-dp-pp", "tp-pp-dp"):
                # one replica of each distinct chip sequence (the quick check's), the
                # whole layout only for the cost model
                firsts = _distinct(cm, devices, tp, pp, dp, order, batches)
                for mb in micro_batch_sizes(job.global_batch)[:2]:
                    if any(b % mb for b in batches):
                        continue
                    for recompute in (False, True) if job.allow_recompute else (False,):
                        args = (devices, chip_of, tp, pp, dp, order, layers, batches, mb,
                                recompute)
                        quick = _layout_bound(cm, args, firsts, schedule)
                        if quick is not None:  # else a stage does not fit: try recompute
                            out.append((quick, args, firsts))
                            break
    return out


def _layout_bound(cm: CostModel, args: tuple, firsts: list[int], schedule: str
                  ) -> float | None:
    """`_quick_check` of the layout `_layout(*args)` on its distinct replicas ``firsts``."""
    dp = args[4]
    shards = dp if cm.job.allow_zero1 and dp > 1 else 1
    return _quick_check(cm, _layout(*args, only=firsts), schedule, shards)


def _block(order: str, p: int, d: int, pp: int, dp: int) -> int:
    """The TP-sized block of devices holding stage p of replica d."""
    return (p * dp + d) if order == "tp-dp-pp" else (d * pp + p)


def _distinct(cm: CostModel, devices, tp: int, pp: int, dp: int, order: str,
              batches: list[int]) -> list[int]:
    """The first replica of each chip sequence (node group of each stage, the kind of link
    into it) and batch: the ones the quick check looks at, found without building any. The
    kind of link into a stage depends only on the two groups and whether the stage shares
    the previous one's node (`links.node_link`): that flag stands for it here."""
    group_of = [n.group.index for n in cm.nodes]
    seen: dict[tuple, int] = {}
    for d in range(dp):
        nodes = [devices[_block(order, p, d, pp, dp) * tp][0] for p in range(pp)]
        key = tuple((group_of[n], p > 0 and nodes[p - 1] == n) for p, n in enumerate(nodes))
        seen.setdefault((key, batches[d]), d)
    return list(seen.values())


def _quick_check(cm: CostModel, reps: tuple[Replica, ...], schedule: str, shards: int):
    """Tokens/s from the pipeline and optimizer alone (an upper bound), or None if a stage
    does not fit memory -- checked on one replica of each distinct chip sequence."""
    seen: dict[tuple, Replica] = {}
    for r in reps:
        key = tuple(
            (cm.nodes[st.node].group.index, i > 0 and cm.link(r.stages[i - 1].node, st.node)[0])
            for i, st in enumerate(r.stages)
        )
        seen.setdefault((key, r.batch_size), r)
    for r in seen.values():
        for si, st in enumerate(r.stages):
            if cm.memory_of(r, si, schedule, shards).total > cm.chip(st.chip).memory_bytes:
                return None
    pipe = max(cm.pipeline_time_s(r, schedule)[0] for r in seen.values())
    opt = cm.optimizer_time_s(tuple(seen.values()), shards)
    return cm.job.tokens_per_step / (pipe + opt)


def _layout(devices, chip_of, tp, pp, dp, order, layers, batches, mb, recompute,
            only: list[int] | None = None):
    """Every replica (``only``: those replicas, in that order)."""
    replicas = []
    for d in range(dp) if only is None else only:
        stages = []
        start = 0
        for p in range(pp):
            block = _block(order, p, d, pp, dp)
            devs = devices[block * tp : (block + 1) * tp]
            node = devs[0][0]
            stages.append(
                Stage(
                    start,
                    start + layers[p],
                    node,
                    tuple(s for _, s in devs),
                    chip_of[node],
                    recompute,
                )
            )
            start += layers[p]
        replicas.append(Replica(tuple(stages), batches[d], mb))
    return tuple(replicas)


def baseline_of(name: str, description: str, cost: PlanCost | None, **kw) -> Baseline:
    if cost is None:
        return Baseline(name, description, 0.0, None, None, feasible=False, **kw)
    return Baseline(name, description, cost.tokens_per_s, cost.step_time_s, cost.mfu, **kw)


def baselines_and_ideal(cm: CostModel, schedule: str, alone: dict[str, Scored | None]
                        ) -> tuple[dict[str, Baseline], Baseline]:
    """The best single-type plan, the naive mixed plan and the ideal (the sum over chip types
    of each type's best plan alone), all priced by `cm`."""
    naive = naive_mixed(cm, schedule)
    fitting = [(c, r) for c, r in alone.items() if r is not None]
    single_chip, single = max(fitting, key=lambda cr: cr[1].tokens_per_s, default=(None, None))
    per_type = {c: (r.tokens_per_s if r is not None else 0.0) for c, r in alone.items()}
    baselines = {
        "best_single_type": baseline_of(
            "best_single_type",
            "no chip type can train the model alone (only mixed plans fit memory)"
            if single is None
            else f"{single_chip} only: {describe_replicas(single.replicas)}",
            None if single is None else single.cost,
            per_chip_tokens_per_s=per_type,
        ),
        "naive_mixed": baseline_of(
            "naive_mixed",
            "all chips, even layers and batch: " + naive.layout
            if naive is not None
            else "no all-chip homogeneous layout (one TP x PP x DP, even split) fits memory",
            None if naive is None else naive.cost,
        ),
    }
    ideal = Baseline(
        "ideal",
        "sum over chip types of each type alone ("
        + ", ".join(f"{c} {t:,.0f}" for c, t in per_type.items())
        + " tokens/s)",
        sum(per_type.values()),
        per_chip_tokens_per_s=dict(per_type),
    )
    return baselines, ideal
