"""`plan_job`: the planner's public entry point -- a complete, validated Plan with its
estimate, baselines, the ideal and notes, all scored by one `CostModel`. `search_plans` is
the same search that also returns the simulated re-ranking (`simulate_top`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial

from polychip.costmodel import ComputeProfile, CostModel
from polychip.costmodel.economics import priced
from polychip.plan.capabilities import RUNTIME, Capabilities, missing_features, planner_job
from polychip.plan.plan import Baseline, Plan
from polychip.plan.validate import validate_plan
from polychip.planner.baselines import baselines_and_ideal, type_groups
from polychip.planner.diagnose import infeasible_error
from polychip.planner.gcpause import gc_paused
from polychip.planner.notes import plan_notes
from polychip.planner.objective import cheapest, check_objective, cost_note
from polychip.planner.oracle import DEFAULT_TIME_LIMIT_S, OracleSize, check_budget, size_of
from polychip.planner.rerank import Candidate, rerank_note
from polychip.planner.run import Progress, SearchRun
from polychip.planner.schedulenotes import schedule_notes
from polychip.planner.schedules import Option, options, repriced
from polychip.planner.scoring import Scored, Scorer
from polychip.planner.shapes import ShapeBuilder
from polychip.planner.space import max_stages_for
from polychip.spec.cluster import Cluster
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

SCHEDULES = ("auto", "1f1b", "gpipe", "interleaved-1f1b", "zb-h1")
SEARCHED_UNDER = ("1f1b", "gpipe", "zb-h1")  # the speed search's own; others: 1F1B, re-priced


@dataclass(frozen=True)
class PlanSearch:
    """The chosen plan and, when re-ranked by simulation, every candidate best simulated
    first (`ranking[0].plan` is `plan` without its notes)."""

    plan: Plan
    ranking: tuple[Candidate, ...] = ()


def plan_job(
    cluster: Cluster,
    model: ModelSpec,
    job: TrainingJob,
    *,
    exhaustive: bool = False,
    max_stages: int | None = None,
    schedule: str = "auto",
    progress: Progress | None = None,
    profile: ComputeProfile | None = None,
    capabilities: Capabilities = RUNTIME,
    objective: str = "throughput",
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    virtual_stages: int | None = None,
) -> Plan:
    """The fastest plan found for `job` on `cluster` (docs/planner.md).

    `exhaustive`: use the slow oracle (small clusters only). `max_stages`: most pipeline
    stages per replica (default min(layers, 16)). `progress(fraction, message)` is called as
    the search advances. `profile`: measured figures the cost model uses where it has them.
    `capabilities`: what the runtime executes; the planner chooses nothing beyond it (ZeRO-1,
    recompute, TP degrees) and notes what the job asks for that it lacks. `objective`:
    `throughput` (most tokens/s) or `cost` (least US$ per million tokens; every chip needs a
    rent). `time_limit_s` (exhaustive only): the oracle refuses a space it estimates to need
    more (PolychipError, before searching) and stops at it with the best plan so far, noted
    as not proven optimal (docs/planner.md, "The oracle's limits"). `schedule`: `auto` (the
    fastest that fits among those `capabilities` runs: 1f1b, zb-h1, interleaved-1f1b with
    its chunk counts; docs/planner.md "Schedules"), or one of 1f1b, gpipe, zb-h1,
    interleaved-1f1b (with `virtual_stages`, default 2).
    Raises InfeasibleError naming the limit when nothing fits, and PolychipError for a bad
    argument.
    """
    return search_plans(
        cluster,
        model,
        job,
        exhaustive=exhaustive,
        max_stages=max_stages,
        schedule=schedule,
        progress=progress,
        profile=profile,
        capabilities=capabilities,
        objective=objective,
        time_limit_s=time_limit_s,
        virtual_stages=virtual_stages,
    ).plan


@gc_paused
def search_plans(
    cluster: Cluster,
    model: ModelSpec,
    job: TrainingJob,
    *,
    exhaustive: bool = False,
    max_stages: int | None = None,
    schedule: str = "auto",
    progress: Progress | None = None,
    simulate_top: int = 0,
    profile: ComputeProfile | None = None,
    capabilities: Capabilities = RUNTIME,
    objective: str = "throughput",
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    virtual_stages: int | None = None,
) -> PlanSearch:
    """`plan_job`, and with `simulate_top` > 0 the `simulate_top` best distinct candidates
    by the analytic cost model (plus each chip type's best alone) are replayed in the
    simulator and the plan with the most simulated tokens/s is chosen. The chosen plan's
    `estimate` stays analytic, like its baselines; a note gives the simulated figure."""
    _check_arguments(simulate_top, schedule, max_stages, time_limit_s, virtual_stages)
    check_objective(objective, cluster, simulate_top)
    model.check_seq_len(job.seq_len)
    job, limits = planner_job(job, capabilities)
    cm = CostModel(cluster, model, job, profile)
    searched = schedule if schedule in SEARCHED_UNDER else "1f1b"
    # prune what cannot beat the best, unless every scored candidate is used
    scorer = Scorer(ShapeBuilder(cm, searched), prune=not simulate_top and objective != "cost")
    stages = max_stages_for(model, max_stages)
    types = type_groups(cluster)
    if exhaustive:  # refuse a space too big for the oracle before searching anything
        check_budget(oracle_size(scorer, stages, types), time_limit_s, stages)
    opts, skipped = options(schedule, virtual_stages, capabilities, model.num_layers)
    # ZB-H1 holds S micro-batches on every stage: its memory wants shapes of its own (the
    # fast search's candidates refitted, also under --exhaustive, whose oracle proves 1F1B's)
    zb_search = schedule == "auto" and Option("zb-h1") in opts
    run = SearchRun(scorer, stages, progress or (lambda f, m: None),
                    steps=len(types) + (len(types) > 1) + 1 + bool(simulate_top) + zb_search,
                    exhaustive=exhaustive, deadline=time.monotonic() + time_limit_s)
    alone, fastest = run.every_type(types, len(cluster.groups))
    if fastest is None:
        raise infeasible_error(cm, scorer.builder, stages)
    chosen = None if schedule == searched else run.schedules(cm, fastest, alone, opts, zb_search)
    if chosen is not None:
        fastest, alone = chosen.best, chosen.alone
    best = fastest
    if objective == "cost":
        pool = [*scorer.scored(), *(r for r in alone.values() if r is not None), best]
        best = cheapest(cluster, pool) or best
        best = repriced(cm, best, opts) if chosen else best
    run.report(run.done / run.steps, "baselines")
    to_plan = partial(_plan_of, cm, *baselines_and_ideal(cm, searched, alone))

    ranking: list[Candidate] = []
    if simulate_top:
        ranking = run.rerank(scorer, best, alone, simulate_top, to_plan, cm,
                             lambda s: repriced(cm, s, opts) if chosen else s)
        best = ranking[0].scored
    plan = to_plan(best)
    notes = plan_notes(plan, best, cm, exhaustive) + limits
    if chosen is not None:
        notes += schedule_notes(best, chosen.verdicts, cm) + skipped
    if exhaustive and zb_search:
        notes.append("exhaustive: the oracle covers shapes sized for 1F1B's memory; those "
                     "sized for zb-h1's (every stage holding S micro-batches) come from the "
                     "fast search")
    if not run.proven:
        notes.insert(0, f"NOT PROVEN OPTIMAL: the exhaustive search stopped at --time-limit "
                     f"{time_limit_s:g} s; this is the best plan found so far")
    notes += [f"the runtime cannot train this plan: {m}"
              for m in missing_features(plan, capabilities)]
    if ranking:
        notes.append(rerank_note(ranking))
    if objective == "cost":
        notes.append(cost_note(cluster, best, fastest))
    run.report(1.0, "done")
    return PlanSearch(replace(plan, notes=tuple(notes)), tuple(ranking))


def _plan_of(cm: CostModel, baselines: dict[str, Baseline], ideal: Baseline, scored: Scored
             ) -> Plan:
    """The validated, priced plan of a scored candidate, with the baselines and the ideal."""
    plan = Plan(cluster=cm.cluster, model=cm.model, job=cm.job, replicas=scored.replicas,
                schedule=scored.schedule,  # type: ignore[arg-type]
                virtual_stages=scored.virtual_stages, zero1=scored.zero1,
                estimate=scored.cost.to_estimate(scored.replicas, cm),
                baselines=baselines, ideal=ideal)
    validate_plan(plan)
    return priced(plan)


def oracle_size(scorer: Scorer, stages: int, types: dict[str, list[int]]) -> OracleSize:
    """The oracle's first pass over every search `search_plans` runs: each chip type
    alone, then (with two or more types) all chips."""
    calls = list(types.values())
    if len(types) > 1:
        calls.append(sorted(i for groups in calls for i in groups))
    sizes = [size_of(scorer.builder, stages, groups) for groups in calls]
    return OracleSize(
        sum(s.templates for s in sizes),
        sum(s.kinds for s in sizes),
        sum(s.first_pass_shapes for s in sizes),
        max(s.seconds_per_shape for s in sizes),
    )


def _check_arguments(simulate_top: int, schedule: str, max_stages: int | None,
                     time_limit_s: float, virtual_stages: int | None = None) -> None:
    if not time_limit_s > 0:
        raise PolychipError(f"--time-limit {time_limit_s} must be > 0 seconds")
    if simulate_top < 0:
        raise PolychipError(f"simulate_top {simulate_top} must be >= 0 (0: no re-ranking)")
    if schedule not in SCHEDULES:
        raise PolychipError(
            f"schedule {schedule!r} is not supported by the planner: use one of "
            f"{', '.join(SCHEDULES)}"
        )
    if virtual_stages is not None and (schedule != "interleaved-1f1b" or virtual_stages < 2):
        raise PolychipError(f"--virtual-stages {virtual_stages}: it is interleaved-1f1b's "
                            "chunks per stage, >= 2; add --schedule interleaved-1f1b or drop it")
    if max_stages is not None and max_stages < 1:
        raise PolychipError(f"--max-stages {max_stages} must be >= 1")
