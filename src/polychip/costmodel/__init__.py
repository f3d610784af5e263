"""Time, memory and communication estimates: analytic, overridable by measured profiles."""

from polychip.costmodel.comm import LinkKind, p2p_time_s, ring_allreduce_time_s
from polychip.costmodel.compute import StageTimes
from polychip.costmodel.estimate import CostModel, PlanCost
from polychip.costmodel.measured import BlockFigures, ComputeProfile, ProfileSet
from polychip.costmodel.memory import MemoryBreakdown, in_flight_micro_batches

__all__ = [
    "BlockFigures",
    "ComputeProfile",
    "CostModel",
    "LinkKind",
    "MemoryBreakdown",
    "PlanCost",
    "ProfileSet",
    "StageTimes",
    "in_flight_micro_batches",
    "p2p_time_s",
    "ring_allreduce_time_s",
]
