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

Every re-plan is logged (:mod:`polychip.elastic.events`). Not yet: re-planning when a chip is
persistently slower than planned, multi-node elastic jobs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from polychip.elastic.events import Replan, log_event
from polychip.elastic.watch import ClusterWatch
from polychip.plan.plan import Plan
from polychip.planner.api import plan_job
from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest
from polychip.runtime.errors import RankDied, RuntimeSetupError
from polychip.runtime.launch import launch_local
from polychip.runtime.metrics import RunSummary, absorb_rank_logs
from polychip.runtime.session import FAULT_ENV, TrainTask, estimate_tokens_per_s
from polychip.runtime.topology import rank_roles
from polychip.runtime.train_config import TrainConfig
from polychip.spec.cluster import Cluster
from polychip.spec.shrink import without_chips

Replanner = Callable[[Plan, Plan], Plan]  # (the plan that ran, it on the new cluster) -> next


@dataclass(frozen=True)
class ElasticRun:
    summary: RunSummary | None  # the last plan's run
    plan: Plan  # the plan that finished the job
    replans: tuple[Replan, ...]


def run_elastic(plan: Plan, config: TrainConfig, *, max_restarts: int = 3,
                say: Callable[[str], None] = print, replanner: Replanner | None = None,
                cluster_file: str | Path | None = None, poll_s: float = 1.0) -> ElasticRun:
    """Train ``plan`` to ``config.steps``, re-planning after each rank death (at most
    ``max_restarts``) and whenever ``cluster_file`` grows. ``replanner`` chooses the next
    plan (default: the planner on the new cluster)."""
    if not config.checkpoint_dir:
        raise RuntimeSetupError("--elastic needs --checkpoint-dir DIR (a restart resumes from "
                                "the newest complete save there)")
    replans: list[Replan] = []
    current, cfg, deaths = plan, config, 0
    with tempfile.TemporaryDirectory(prefix="polychip-elastic-") as tmp:
        stop_file = Path(tmp) / "stop"
        watch = ClusterWatch(cluster_file, stop_file, poll_s, say)
        while True:
            try:
                with watch.during(current.cluster):
                    summary = launch_local(current, TrainTask(cfg), stop_file=stop_file)[0]
            except RankDied as died:
                if deaths >= max_restarts:
                    raise
                deaths += 1
                cluster, reason = _without_dead(current, died)
                current, cfg = _next(current, cfg, cluster, reason, replans, replanner, say,
                                     died=died)
                continue
            if watch.grown is None or _finished(cfg):
                return ElasticRun(summary, current, tuple(replans))
            reason = (f"{watch.grown.num_devices - current.cluster.num_devices:+d} chips "
                      f"in {cluster_file}")
            current, cfg = _next(current, cfg, watch.grown, reason, replans, replanner, say)


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
          died: RankDied | None = None) -> tuple[Plan, TrainConfig]:
    """Plan again on ``cluster``, log it, and the config that resumes."""
    detected = time.time()
    os.environ.pop(FAULT_ENV, None)  # an injected death happens once
    if cfg.metrics_path:
        absorb_rank_logs(cfg.metrics_path)
    start = time.monotonic()
    on_new = dataclasses.replace(current, cluster=cluster)
    nxt = (replanner(current, on_new) if replanner is not None
           else plan_job(cluster, current.model, current.job, schedule=current.schedule))
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
