"""A chip persistently slower than planned: the watch the elastic supervisor keeps on a
running plan (docs/elastic.md, "A chip slower than planned").

While a run goes on each rank appends a record per step to ``OUT.jsonl.rank<N>``
(:class:`polychip.runtime.metrics.StepLog`). :class:`SlowChipWatch` reads only the lines
added since its last poll and holds each rank's compute phase (forward + backward of its
micro-batches; emulated chip time when the chips are emulated, measured seconds otherwise)
against the estimate of its stage -- the same figure ``polychip calibrate`` compares
(:func:`polychip.planner.calibrate.estimated_stages`), with the profiles the plan was made
with. A rank whose compute is at least ``threshold`` x its estimate for ``window``
consecutive steps (its first ``skip`` steps of this run left out: warm-up) is a slow chip.
An emulated step whose real compute overran its slots (``compute_overruns``: the host was
too slow for the dilation) says nothing about the chip: it is passed over, neither counted
nor breaking a run of slow steps.

Only compute is watched: it is the phase a chip owns. Waits and gradient sync measure the
others (a fast chip waits for a slow one), and the host's idle time is not the chip's.
A measured (not emulated) run without calibrated profiles is held against the analytic cost
model, which may be off for every chip: calibrate first (``polychip calibrate``) or the
first "slow chip" found is the cost model's own error (re-calibrating then fixes it too).

Torch-free: only the planner's cost model and plain JSON lines.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polychip.costmodel import ComputeProfile, CostModel
from polychip.plan.plan import Plan
from polychip.planner.calibrate import estimated_stages
from polychip.spec.errors import PolychipError

DEFAULT_THRESHOLD = 1.25
DEFAULT_WINDOW = 5
DEFAULT_SKIP = 1  # a run's first step (and a resumed run's) is warm-up


@dataclass(frozen=True)
class SlowChip:
    """A rank whose compute stayed at least the threshold x its stage's estimate."""

    rank: int
    replica: int
    stage: int
    chip: str
    node: int
    step: int  # the window's last step: when it was found
    first_step: int  # the window's first step
    ratio: float  # the median over the window of measured / estimated compute
    measured_s: float  # the median compute seconds per step over the window
    estimated_s: float  # the stage's estimated compute seconds per step
    basis: str  # "emulated" chip time or "measured" wall time

    def line(self) -> str:
        return (f"rank {self.rank} ({self.chip}, node {self.node}, replica {self.replica} "
                f"stage {self.stage}) computed {self.ratio:.2f}x its estimate "
                f"({self.measured_s * 1e3:,.2f} ms vs {self.estimated_s * 1e3:,.2f} ms per "
                f"step, {self.basis}) in steps {self.first_step}-{self.step}")


def stage_compute_estimates(plan: Plan, profile: ComputeProfile | None = None
                            ) -> dict[tuple[int, int], float]:
    """(replica, stage) -> the estimate's compute seconds per step (as calibrate splits it)."""
    cm = CostModel(plan.cluster, plan.model, plan.job, profile)
    cost = cm.evaluate(plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages)
    return {(s.replica, s.stage): s.phases["compute_s"]
            for s in estimated_stages(plan, cm, cost, "cpu-tensors")}


def record_compute_s(record: dict[str, Any]) -> tuple[float, str]:
    """A step record's compute seconds and their basis: emulated chip time when it has it."""
    emulated = record.get("emulated_time")
    if emulated is not None:
        return float(emulated["compute_s"]), "emulated"
    return float(record["compute_s"]), "measured"


def _overran(record: dict[str, Any]) -> bool:
    """An emulated step whose real compute overran its slots: its emulated compute is this
    host's speed, not the emulated chip's (nothing to learn about the chip from it)."""
    return record.get("emulated_time") is not None and record.get("compute_overruns", 0) > 0


@dataclass
class _Streak:
    seen: int = 0  # steps of this run observed
    steps: list[int] = field(default_factory=list)  # consecutive slow steps
    ratios: list[float] = field(default_factory=list)
    computes: list[float] = field(default_factory=list)


class SlowChipWatch:
    """Watches one running plan's rank logs (``metrics_path`` + ``.rank<N>``); :meth:`poll`
    reads what was added and says which rank, if any, is persistently slow."""

    def __init__(self, plan: Plan, metrics_path: str | Path, *,
                 threshold: float = DEFAULT_THRESHOLD, window: int = DEFAULT_WINDOW,
                 skip: int = DEFAULT_SKIP, profile: ComputeProfile | None = None) -> None:
        if not threshold > 1.0:
            raise PolychipError(f"slow-chip threshold {threshold}: give a ratio > 1 "
                                f"(measured / estimated compute; default {DEFAULT_THRESHOLD})")
        if window < 1 or skip < 0:
            raise PolychipError(f"slow-chip window {window}, skip {skip}: the window needs "
                                f">= 1 step (default {DEFAULT_WINDOW}), skip >= 0")
        self.plan, self.threshold, self.window, self.skip = plan, threshold, window, skip
        self.metrics_path = Path(metrics_path)
        self.estimates = stage_compute_estimates(plan, profile)
        self.ranks = {r.rank: r for r in plan.ranks()}
        self._streaks = {r: _Streak() for r in self.ranks}
        self._offsets: dict[int, int] = {}
        self.found: SlowChip | None = None

    def log_path(self, rank: int) -> Path:
        """runtime.metrics.rank_log_path (not imported: that module needs torch)."""
        return Path(f"{self.metrics_path}.rank{rank}")

    def poll(self) -> SlowChip | None:
        """Read every rank log's new lines; the slow chip found (this poll or before), or
        None. Of several found in one poll, the one furthest over its estimate."""
        if self.found is not None:
            return self.found
        found = [hit for rank in self.ranks for rec in self._new_records(rank)
                 if (hit := self.observe(rec)) is not None]
        if found:
            self.found = max(found, key=lambda s: s.ratio)
        return self.found

    def _new_records(self, rank: int) -> list[dict[str, Any]]:
        path = self.log_path(rank)
        try:
            with path.open("rb") as f:
                start = self._offsets.get(rank, 0)
                if f.seek(0, 2) < start:  # a new log in its place (the run restarted)
                    start, self._streaks[rank] = 0, _Streak()
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]  # a line being written waits for next time
        self._offsets[rank] = start + len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def observe(self, record: dict[str, Any]) -> SlowChip | None:
        """Take one step record (of a rank, in step order); a :class:`SlowChip` when this
        step completes a window of slow steps for its rank."""
        rank = int(record["rank"])
        info, streak = self.ranks.get(rank), self._streaks.get(rank)
        if info is None or streak is None:
            raise PolychipError(f"{self.metrics_path}: a record of rank {rank}, the plan has "
                                f"{len(self.ranks)} rank(s); watch the plan the run trains")
        streak.seen += 1
        if streak.seen <= self.skip or _overran(record):
            return None
        estimate = self.estimates[(info.replica, info.stage)]
        compute, basis = record_compute_s(record)
        ratio = compute / estimate if estimate > 0 else 0.0
        if ratio < self.threshold:
            streak.steps, streak.ratios, streak.computes = [], [], []
            return None
        streak.steps.append(int(record["step"]))
        streak.ratios.append(ratio)
        streak.computes.append(compute)
        if len(streak.steps) < self.window:
            return None
        steps, ratios = streak.steps[-self.window:], streak.ratios[-self.window:]
        return SlowChip(rank=rank, replica=info.replica, stage=info.stage, chip=info.chip,
                        node=info.node, step=steps[-1], first_step=steps[0],
                        ratio=statistics.median(ratios),
                        measured_s=statistics.median(streak.computes[-self.window:]),
                        estimated_s=estimate, basis=basis)
