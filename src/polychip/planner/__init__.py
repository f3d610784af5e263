"""The planner: searches plans, scores every candidate with the one cost model.

Public entry point: `plan_job(cluster, model, job, *, exhaustive=False, max_stages=None,
schedule="1f1b", progress=None) -> Plan` (docs/planner.md).
"""

from polychip.planner.api import plan_job

__all__ = ["plan_job"]
