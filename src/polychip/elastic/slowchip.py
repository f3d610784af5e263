"""The elastic supervisor's handling of a slow chip: a thread that watches the running plan
(:class:`~polychip.elastic.slowdown.SlowChipWatch`) and, when a chip is persistently slower
than planned, asks the ranks to stop after their current step (the launcher's stop file:
they save); then a re-calibration and a new plan (:mod:`.recalibrate`), logged as a
:class:`SlowReplan` with the old and new estimates, the chip and its measured ratio.

How the supervisor uses it, around each launch of a plan::

    monitor = SlowChipMonitor(stop_file, metrics_path, threshold=..., window=...)
    with monitor.during(plan, profile=pset):
        launch_local(plan, task, stop_file=stop_file)
    if monitor.found is not None and not finished:
        new, pset, event = replan_for_slow_chip(plan, metrics_path, monitor.found, ...)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from polychip.costmodel import ComputeProfile, CostModel, ProfileSet
from polychip.elastic.recalibrate import recalibrated_plan
from polychip.elastic.slowdown import DEFAULT_THRESHOLD, DEFAULT_WINDOW, SlowChip, SlowChipWatch
from polychip.plan.plan import Plan
from polychip.runtime.faults import SLOW_ENV
from polychip.spec.profile import Profile


class SlowChipMonitor:
    """Polls the running plan's rank logs every ``poll_s`` seconds from a thread; on the
    first slow chip found, writes ``stop_file`` (the ranks stop after their step and save)."""

    def __init__(self, stop_file: Path, metrics_path: str | Path, *,
                 threshold: float = DEFAULT_THRESHOLD, window: int = DEFAULT_WINDOW,
                 poll_s: float = 1.0, say: Callable[[str], None] = print) -> None:
        self.stop_file, self.metrics_path = stop_file, Path(metrics_path)
        self.threshold, self.window, self.poll_s, self.say = threshold, window, poll_s, say
        self.found: SlowChip | None = None
        self.found_at: float | None = None  # Unix time

    @contextmanager
    def during(self, plan: Plan, profile: ComputeProfile | None = None
               ) -> Iterator[SlowChipMonitor]:
        """Watch ``plan`` (estimated with ``profile``) while it runs; :attr:`found` after."""
        watch = SlowChipWatch(plan, self.metrics_path, threshold=self.threshold,
                              window=self.window, profile=profile)
        self.found = self.found_at = None
        done = threading.Event()
        thread = threading.Thread(target=self._poll, args=(watch, done), daemon=True,
                                  name="polychip-slow-chip-watch")
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()

    def _poll(self, watch: SlowChipWatch, done: threading.Event) -> None:
        while not done.wait(self.poll_s):
            found = watch.poll()
            if found is not None:
                self.found, self.found_at = found, time.time()
                self.say(f"elastic: slow chip: {found.line()}; stopping after the current "
                         f"step to save, re-calibrate and re-plan")
                self.stop_file.write_text("slow chip")
                return


@dataclass(frozen=True)
class SlowReplan:
    """A re-plan for a chip slower than planned (``elastic.jsonl``, like a Replan)."""

    attempt: int
    reason: str  # "slow chip"
    detected_at: float  # Unix time the watch found it
    resumed_step: int  # the checkpoint's step the new plan starts from
    slow_rank: int
    slow_chip: str
    slow_node: int
    ratio: float  # measured / estimated compute over the window (median)
    window_steps: tuple[int, int]  # the window's first and last step
    basis: str  # emulated chip time or measured
    compute_corrections: dict[str, float]  # chip type -> compute factor the new plan used
    old_world: int
    new_world: int
    old_tokens_per_s: float  # the running plan as it was estimated when planned
    old_recalibrated_tokens_per_s: float  # the running plan, with the new corrections
    new_tokens_per_s: float  # the new plan, with the new corrections
    replan_s: float  # seconds the re-calibration and the planner took

    def line(self) -> str:
        return (f"elastic: slow chip (rank {self.slow_rank}, {self.slow_chip}, node "
                f"{self.slow_node}, {self.ratio:.2f}x its estimate); re-calibrated and "
                f"re-planned in {self.replan_s:.1f} s (the new plan uses {self.new_world}); "
                f"estimate {self.old_tokens_per_s:,.0f} tokens/s as planned, "
                f"{self.old_recalibrated_tokens_per_s:,.0f} re-calibrated -> "
                f"{self.new_tokens_per_s:,.0f} ({self.change:+.0%}); resuming from step "
                f"{self.resumed_step}")

    @property
    def change(self) -> float:
        """The new plan's estimate over the running one's, both re-calibrated."""
        return self.new_tokens_per_s / self.old_recalibrated_tokens_per_s - 1


def tokens_per_s(plan: Plan, profile: ComputeProfile | None) -> float:
    cm = CostModel(plan.cluster, plan.model, plan.job, profile)
    return cm.evaluate(plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages
                       ).tokens_per_s


def replan_for_slow_chip(plan: Plan, metrics_path: str | Path, found: SlowChip, *,
                         detected_at: float, attempt: int = 1, since_step: int, resumed_step: int,
                         profiles: Sequence[Profile] = (), before: ComputeProfile | None = None
                         ) -> tuple[Plan, ProfileSet, SlowReplan]:
    """Re-calibrate ``plan`` from its records (steps ``since_step`` on) and plan again;
    ``profiles``/``before``: those it was planned with (files, and as the cost model saw
    them)."""
    start = time.monotonic()
    new, pset = recalibrated_plan(plan, metrics_path, profiles=profiles,
                                  since_step=since_step)
    seconds = time.monotonic() - start
    event = SlowReplan(
        attempt=attempt, reason="slow chip", detected_at=detected_at, resumed_step=resumed_step,
        slow_rank=found.rank, slow_chip=found.chip, slow_node=found.node, ratio=found.ratio,
        window_steps=(found.first_step, found.step), basis=found.basis,
        compute_corrections={c: p.corrections.compute for c, p in pset.profiles.items()},
        old_world=plan.world_size, new_world=new.world_size,
        old_tokens_per_s=tokens_per_s(plan, before),
        old_recalibrated_tokens_per_s=tokens_per_s(plan, pset),
        new_tokens_per_s=tokens_per_s(new, pset), replan_s=seconds)
    return new, pset, event


def same_layout(a: Plan, b: Plan) -> bool:
    """Whether two plans put the same work on the same chips (a re-plan that changes
    nothing need not restart the run)."""
    return (a.replicas, a.schedule, a.zero1, a.virtual_stages) == (
        b.replicas, b.schedule, b.zero1, b.virtual_stages)


def follow_injected_slowdown(old: Plan, new: Plan) -> None:
    """Fault injection (tests, benchmarks): the chip ``SLOW_ENV`` made slow stays slow under
    the new plan -- the variable names its rank there (the same node and device), or goes
    when the new plan leaves that chip out. From step 0: the new plan's steps all come after
    the slowdown began."""
    value = os.environ.get(SLOW_ENV, "")
    if not value:
        return
    rank, factor, _ = value.split(":")
    chip = next((r.node, r.local_device) for r in old.ranks() if r.rank == int(rank))
    there = [r.rank for r in new.ranks() if (r.node, r.local_device) == chip]
    if there:
        os.environ[SLOW_ENV] = f"{there[0]}:{factor}:0"
    else:
        os.environ.pop(SLOW_ENV)
