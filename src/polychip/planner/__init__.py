"""The planner: searches plans, scores every candidate with the one cost model.

Public entry points (docs/planner.md):
`plan_job(cluster, model, job, *, exhaustive=False, max_stages=None, schedule="auto",
progress=None) -> Plan`, and `search_plans(..., simulate_top=K) -> PlanSearch`, which also
re-ranks the K best candidates by a simulated step.
"""

from polychip.planner.api import PlanSearch, plan_job, search_plans
from polychip.planner.rerank import Candidate

__all__ = ["Candidate", "PlanSearch", "plan_job", "search_plans"]
