"""`plan_job`: the planner's one public entry point -- a complete, validated Plan with its
estimate, baselines, the ideal and notes, all scored by one `CostModel`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from polychip.costmodel import CostModel
from polychip.plan.plan import Baseline, Plan
from polychip.plan.validate import validate_plan
from polychip.planner.baselines import baseline_of, describe_replicas, naive_mixed, type_groups
from polychip.planner.diagnose import infeasible_error
from polychip.planner.exhaustive import Exhaustive
from polychip.planner.notes import plan_notes
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.planner.space import max_stages_for
from polychip.spec.cluster import Cluster
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

Progress = Callable[[float, str], None]
SCHEDULES = ("1f1b", "gpipe")


def plan_job(
    cluster: Cluster,
    model: ModelSpec,
    job: TrainingJob,
    *,
    exhaustive: bool = False,
    max_stages: int | None = None,
    schedule: str = "1f1b",
    progress: Progress | None = None,
) -> Plan:
    """The fastest plan found for `job` on `cluster` (docs/planner.md).

    `exhaustive`: use the slow oracle (small clusters only). `max_stages`: most pipeline
    stages per replica (default min(layers, 16)). `progress(fraction, message)` is called as
    the search advances. Raises InfeasibleError naming the limit when nothing fits, and
    PolychipError for a bad argument.
    """
    if schedule not in SCHEDULES:
        raise PolychipError(
            f"schedule {schedule!r} is not supported by the planner: use 1f1b or gpipe"
        )
    if max_stages is not None and max_stages < 1:
        raise PolychipError(f"--max-stages {max_stages} must be >= 1")
    report = progress or (lambda f, m: None)
    cm = CostModel(cluster, model, job)
    scorer = Scorer(ShapeBuilder(cm, schedule))
    stages = max_stages_for(model, max_stages)
    types = type_groups(cluster)
    steps = len(types) + (1 if len(types) > 1 else 0) + 1
    done = 0

    def search(groups: list[int], label: str) -> Scored | None:
        nonlocal done
        base, span = done / steps, 1 / steps

        def sub(f: float, msg: str) -> None:
            report(min(base + f * span, 1.0), f"{label}: {msg}")

        result = FastSearch(scorer, stages, sub).run(groups)
        if exhaustive:
            result = Exhaustive(scorer, stages, progress=sub).run(groups, incumbent=result)
        done += 1
        return result

    alone = {chip: search(groups, f"{chip} only") for chip, groups in types.items()}
    best = None
    for result in alone.values():
        best = better(best, result)  # single-type plans are part of the space
    if len(types) > 1:
        best = better(best, search(list(range(len(cluster.groups))), "all chips"))
    if best is None:
        raise infeasible_error(cm, scorer.builder, stages)
    report((steps - 1) / steps, "baselines")
    naive = naive_mixed(cm, schedule)
    single_chip, single = max(
        ((c, r) for c, r in alone.items() if r is not None), key=lambda cr: cr[1].tokens_per_s
    )
    per_type = {c: (r.tokens_per_s if r is not None else 0.0) for c, r in alone.items()}
    baselines = {
        "best_single_type": baseline_of(
            "best_single_type",
            f"{single_chip} only: {describe_replicas(single.replicas)}",
            single.cost,
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
    plan = Plan(
        cluster=cluster,
        model=model,
        job=job,
        replicas=best.replicas,
        schedule=schedule,  # type: ignore[arg-type]
        zero1=best.zero1,
        estimate=best.cost.to_estimate(best.replicas, cm),
        baselines=baselines,
        ideal=ideal,
    )
    plan = replace(plan, notes=tuple(plan_notes(plan, best, cm, exhaustive)))
    validate_plan(plan)
    report(1.0, "done")
    return plan
