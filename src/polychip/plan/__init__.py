"""THE CONTRACT: Plan, stages, replicas; JSON round-trip; validation; per-rank schedule."""

from polychip.plan.plan import (
    SCHEMA_VERSION,
    Baseline,
    Estimate,
    Plan,
    RankInfo,
    Replica,
    Stage,
)
from polychip.plan.serialize import load_plan, plan_from_dict, plan_to_dict, save_plan
from polychip.plan.validate import PlanError, validate_plan

__all__ = [
    "SCHEMA_VERSION",
    "Baseline",
    "Estimate",
    "Plan",
    "PlanError",
    "RankInfo",
    "Replica",
    "Stage",
    "load_plan",
    "plan_from_dict",
    "plan_to_dict",
    "save_plan",
    "validate_plan",
]
