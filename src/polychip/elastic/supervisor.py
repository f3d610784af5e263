"""``polychip train PLAN --elastic``: run a plan through torchrun; when a rank dies, plan
again on the chips that survive, or when chips join, on the larger cluster (same model, same
job, the same global batch); resume from the newest complete checkpoint and go on.

A rank's death is the launcher's :class:`~polychip.runtime.errors.RankDied` (its process
ended without a Python error: killed, out of memory, a crash in native code). Its chip is
taken out of the cluster (:func:`polychip.spec.shrink.without_chips`) and the planner
searches the smaller cluster; at most ``max_restarts`` times. A rank that fails with a
Python error (bad input, a bug) is not retried.

Chips that join: with ``cluster_file``, the supervisor watches that cluster file while the
plan runs (:class:`~polychip.elastic.watch.ClusterWatch`); when it changes to a valid
cluster of more chips, the ranks are asked to stop after their current step (the launcher's
stop file), they save, and the planner searches the new cluster.

A chip slower than planned: while a plan runs, the supervisor also reads its ranks' step
logs (:class:`~polychip.elastic.slowchip.SlowChipMonitor`); when a rank's compute stays at
least ``slow_threshold`` x its estimate for ``slow_window`` steps, the ranks stop after their
current step and save, the run's metrics re-calibrate the cost model and the planner plans
again with the corrections (:mod:`polychip.elastic.recalibrate`); later plans keep them.

Every re-plan is logged (:mod:`polychip.elastic.events`). Not yet: multi-node elastic jobs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from polychip.costmodel import ProfileSet
from polychip.elastic.events import Replan, log_event
from polychip.elastic.slowchip import (
    SlowChipMonitor,
    SlowReplan,
    follow_injected_slowdown,
    replan_for_slow_chip,
    same_layout,
)
from polychip.elastic.slowdown import DEFAULT_THRESHOLD, DEFAULT_WINDOW
from polychip.elastic.watch import ClusterWatch
from polychip.plan.plan import Plan
from polychip.planner.api import plan_job
from polychip.planner.schedules import replan_schedule
from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest
from polychip.runtime.errors import RankDied, RuntimeSetupError
from polychip.runtime.faults import FAULT_ENV
from polychip.runtime.launch import launch_local
from polychip.runtime.metrics import RunSummary, absorb_rank_logs
from polychip.runtime.session import TrainTask, estimate_tokens_per_s
from polychip.runtime.topology import rank_roles
from polychip.runtime.train_config import TrainConfig
from polychip.spec.cluster import Cluster
from polychip.spec.shrink import without_chips

METRICS = "metrics.jsonl"  # in the checkpoint dir, when the slow-chip watch needs metrics
Replanner = Callable[[Plan, Plan], Plan]  # (the plan that ran, it on the new cluster) -> next


@dataclass(frozen=True)
class ElasticRun:
    summary: RunSummary | None  # the last plan's run
    plan: Plan  # the plan that finished the job
    replans: tuple[Replan | SlowReplan, ...]


def run_elastic(plan: Plan, config: TrainConfig, *, max_restarts: int = 3,
                say: Callable[[str], None] = print, replanner: Replanner | None = None,
                cluster_file: str | Path | None = None, poll_s: float = 1.0,
                slow_threshold: float | None = DEFAULT_THRESHOLD,
                slow_window: int = DEFAULT_WINDOW) -> ElasticRun:
    """Train ``plan`` to ``config.steps``, re-planning after each rank death (at most
    ``max_restarts``), whenever ``cluster_file`` grows, and when a chip is slower than
    planned (``slow_threshold`` x its estimate for ``slow_window`` steps; None: not
    watched; at most ``max_restarts`` times). ``replanner`` chooses the next plan after a
    death or a join (default: the planner on the new cluster)."""
    if not config.checkpoint_dir:
        raise RuntimeSetupError("--elastic needs --checkpoint-dir DIR (a restart resumes from "
                                "the newest complete save there)")
    cfg = config
    if slow_threshold is not None and not cfg.metrics_path:  # the watch reads the step logs
        cfg = dataclasses.replace(cfg, metrics_path=str(Path(cfg.checkpoint_dir) / METRICS))
    replans: list[Replan | SlowReplan] = []
    current, deaths, slow_replans, learned = plan, 0, 0, None
    with tempfile.TemporaryDirectory(prefix="polychip-elastic-") as tmp:
        stop_file = Path(tmp) / "stop"
        watch = ClusterWatch(cluster_file, stop_file, poll_s, say)
        slow = (None if slow_threshold is None else SlowChipMonitor(
            stop_file, str(cfg.metrics_path), threshold=slow_threshold, window=slow_window,
            poll_s=poll_s, say=say))
        while True:
            since = _resumes_at(cfg)
            try:
                with watch.during(current.cluster), _watching(slow, current, learned):
                    summary = launch_local(current, TrainTask(cfg), stop_file=stop_file)[0]
            except RankDied as died:
                if deaths >= max_restarts:
                    raise
                deaths += 1
                cluster, reason = _without_dead(current, died)
                current, cfg = _next(current, cfg, cluster, reason, replans, replanner, say,
                                     died=died, profile=learned)
                continue
            found = None if slow is None else slow.found
            if (watch.grown is None and found is None) or _finished(cfg):
                return ElasticRun(summary, current, tuple(replans))
            if watch.grown is not None:
                reason = (f"{watch.grown.num_devices - current.cluster.num_devices:+d} chips "
                          f"in {cluster_file}")
                current, cfg = _next(current, cfg, watch.grown, reason, replans, replanner,
                                     say, profile=learned)
                continue
            assert slow is not None
            slow_replans += 1
            nxt, learned = _slow_next(current, cfg, slow, since, learned, replans, say)
            if same_layout(nxt, current) or slow_replans >= max_restarts:
                say("elastic: no longer watching for slow chips (" + (
                    "the re-calibrated plan is the running one: corrections are per chip "
                    "type, docs/elastic.md" if same_layout(nxt, current) else
                    f"{slow_replans} slow-chip re-plans") + ")")
                slow = None
            current, cfg = nxt, dataclasses.replace(cfg, resume=True)


def _watching(slow: SlowChipMonitor | None, plan: Plan, profile: ProfileSet | None
              ) -> AbstractContextManager[object]:
    return nullcontext() if slow is None else slow.during(plan, profile)


def _saved_step(cfg: TrainConfig) -> int:
    """The step of the newest complete save (0: none)."""
    assert cfg.checkpoint_dir is not None
    folder = latest_complete(cfg.checkpoint_dir)
    return 0 if folder is None else read_manifest(folder).step


def _resumes_at(cfg: TrainConfig) -> int:
    """The step a launch with ``cfg`` starts from."""
    return _saved_step(cfg) if cfg.resume else 0


def _slow_next(current: Plan, cfg: TrainConfig, slow: SlowChipMonitor, since: int,
               learned: ProfileSet | None, replans: list[Replan | SlowReplan],
               say: Callable[[str], None]) -> tuple[Plan, ProfileSet]:
    """Re-calibrate from the stopped run's metrics, plan again, log it."""
    assert slow.found is not None and slow.found_at is not None
    assert cfg.checkpoint_dir is not None and cfg.metrics_path is not None
    nxt, pset, event = replan_for_slow_chip(
        current, cfg.metrics_path, slow.found, detected_at=slow.found_at,
        attempt=len(replans) + 1, since_step=since, resumed_step=_saved_step(cfg),
        profiles=() if learned is None else tuple(learned.profiles.values()), before=learned)
    follow_injected_slowdown(current, nxt)
    replans.append(event)
    log_event(cfg.checkpoint_dir, event)
    say(event.line())
    return nxt, pset


def _without_dead(plan: Plan, died: RankDied) -> tuple[Cluster, str]:
    role = rank_roles(plan, emulate=True)[died.rank]
    cluster, _ = without_chips(plan.cluster, {role.node: 1})
    return cluster, (f"rank {died.rank} ({role.chip}, node {role.node}) died "
                     f"(exit {died.exitcode})")


def _finished(cfg: TrainConfig) -> bool:
    assert cfg.checkpoint_dir is not None
    folder = latest_complete(cfg.checkpoint_dir)
    return folder is not None and read_manifest(folder).step >= cfg.steps


def _next(current: Plan, cfg: TrainConfig, cluster: Cluster, reason: str,
          replans: list[Replan], replanner: Replanner | None, say: Callable[[str], None],
          died: RankDied | None = None, profile: ProfileSet | None = None
          ) -> tuple[Plan, TrainConfig]:
    """Plan again on ``cluster``, log it, and the config that resumes."""
    detected = time.time()
    os.environ.pop(FAULT_ENV, None)  # an injected death happens once
    if cfg.metrics_path:
        absorb_rank_logs(cfg.metrics_path)
    start = time.monotonic()
    on_new = dataclasses.replace(current, cluster=cluster)
    nxt = (replanner(current, on_new) if replanner is not None
           else plan_job(cluster, current.model, current.job,
                         schedule=replan_schedule(current.schedule),
                         profile=profile))
    seconds = time.monotonic() - start
    assert cfg.checkpoint_dir is not None
    folder = latest_complete(cfg.checkpoint_dir)
    role = None if died is None else rank_roles(current, emulate=True)[died.rank]
    event = Replan(
        attempt=len(replans) + 1, reason=reason, detected_at=detected,
        resumed_step=0 if folder is None else read_manifest(folder).step,
        old_world=current.world_size, chips=cluster.num_devices, new_world=nxt.world_size,
        old_tokens_per_s=estimate_tokens_per_s(current),
        new_tokens_per_s=estimate_tokens_per_s(nxt), replan_s=seconds,
        died_rank=None if died is None else died.rank,
        died_chip=None if role is None else role.chip,
        died_node=None if role is None else role.node,
        exitcode=None if died is None else died.exitcode)
    replans.append(event)
    log_event(cfg.checkpoint_dir, event)
    say(event.line())
    return nxt, dataclasses.replace(cfg, resume=True)
