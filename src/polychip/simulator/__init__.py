"""Discrete-event replay of one training step of a Plan: timeline, bubbles, memory."""

from polychip.simulator.deadlock import SimulationDeadlock
from polychip.simulator.simulate import simulate
from polychip.simulator.timeline import LinkResult, SimResult, StageResult

__all__ = ["LinkResult", "SimResult", "SimulationDeadlock", "StageResult", "simulate"]
