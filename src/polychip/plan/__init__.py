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
from polychip.plan.schedule import Action, Op, Schedule, StageProgram, build_schedule
from polychip.plan.schedule_text import ScheduleTextError, format_schedule, parse_schedule
from polychip.plan.segments import Segment, chunk_layers, grad_segments
from polychip.plan.serialize import load_plan, plan_from_dict, plan_to_dict, save_plan
from polychip.plan.validate import PlanError, validate_plan

__all__ = [
    "SCHEMA_VERSION",
    "Action",
    "Baseline",
    "Estimate",
    "Op",
    "Plan",
    "PlanError",
    "RankInfo",
    "Replica",
    "Schedule",
    "ScheduleTextError",
    "Segment",
    "Stage",
    "StageProgram",
    "build_schedule",
    "chunk_layers",
    "format_schedule",
    "grad_segments",
    "load_plan",
    "parse_schedule",
    "plan_from_dict",
    "plan_to_dict",
    "save_plan",
    "validate_plan",
]
