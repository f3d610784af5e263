"""`simulate(plan)`: one training step replayed, with the same numbers as the planner's."""

from __future__ import annotations

from polychip.costmodel import CostModel
from polychip.plan.plan import Plan
from polychip.plan.schedule import Schedule, build_schedule
from polychip.simulator.engine import Engine, ReplicaClass, replica_classes
from polychip.simulator.timeline import SimResult, build_result


def simulate(
    plan: Plan,
    *,
    overlap_grad_sync: bool | None = None,
    cost_model: CostModel | None = None,
    schedule: Schedule | None = None,
    dedupe_replicas: bool = True,
) -> SimResult:
    """Replay one step of `plan`.

    overlap_grad_sync: a stage's gradient sync starts once every stage holding the same
      layers has finished its backward (else: once every pipeline has); default: the job's.
    cost_model: where durations come from (default: the plan's cluster, model and job).
    schedule: replay this schedule instead of `build_schedule(plan)`; every replica is
      then replayed on its own.
    dedupe_replicas: replay one representative per class of alike replicas.
    """
    # bound to the plan's replicas: a chip's NIC share counts the chips the plan uses
    cm = (cost_model or CostModel(plan.cluster, plan.model, plan.job)).under(plan.replicas)
    if overlap_grad_sync is None:
        overlap_grad_sync = plan.job.overlap_grad_sync
    if schedule is None and dedupe_replicas:
        classes = replica_classes(plan)
        schedule = build_schedule(plan, replicas=[c.rep for c in classes])
    else:
        classes = tuple(ReplicaClass(ri, (ri,)) for ri in range(len(plan.replicas)))
        schedule = schedule or build_schedule(plan)
    rec = Engine(plan, cm, schedule, classes, overlap_grad_sync).run()
    return build_result(plan, cm, rec, overlap_grad_sync)
