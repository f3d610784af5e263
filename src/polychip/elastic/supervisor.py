"""``polychip train PLAN --elastic``: run a plan through torchrun; when a rank dies, plan
again on the chips that survive (same model, same job, the same global batch), resume from
the newest complete checkpoint, and go on -- as many times as ``max_restarts`` allows.

A rank's death is the launcher's :class:`~polychip.runtime.errors.RankDied` (its process
ended without a Python error: killed, out of memory, a crash in native code). Its chip is
taken out of the cluster (:func:`polychip.spec.shrink.without_chips`), the planner searches
the smaller cluster, and every re-plan is logged -- old and new estimates, the chip lost,
the step resumed from -- on the console and in ``elastic.jsonl`` beside the checkpoints. A
rank that fails with a Python error (bad input, a bug) is not retried.

Not yet: chips that join (a new cluster file taken in at the next checkpoint), re-planning
when a chip is persistently slower than planned, and multi-node elastic jobs (this
supervisor launches on one host).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polychip.plan.plan import Plan
from polychip.planner.api import plan_job
from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest
from polychip.runtime.errors import RankDied, RuntimeSetupError
from polychip.runtime.launch import launch_local
from polychip.runtime.metrics import RunSummary, absorb_rank_logs
from polychip.runtime.session import FAULT_ENV, TrainTask, estimate_tokens_per_s
from polychip.runtime.topology import rank_roles
from polychip.runtime.train_config import TrainConfig
from polychip.spec.shrink import without_chips

EVENTS = "elastic.jsonl"


@dataclass(frozen=True)
class Replan:
    """One recovery: the chip that died, when, and the plans before and after."""

    attempt: int
    died_rank: int
    died_chip: str
    died_node: int
    exitcode: int
    detected_at: float  # Unix time the supervisor learned of the death
    resumed_step: int  # the checkpoint's step the new plan starts from
    old_world: int  # ranks of the plan that lost one
    survivors: int  # chips left in the cluster
    new_world: int  # ranks of the new plan (the planner may leave some chips out)
    old_tokens_per_s: float  # the cost model's estimates
    new_tokens_per_s: float
    replan_s: float  # seconds the planner took

    def line(self) -> str:
        change = ""
        if self.old_tokens_per_s and self.new_tokens_per_s:
            change = (f"; estimate {self.old_tokens_per_s:,.0f} -> "
                      f"{self.new_tokens_per_s:,.0f} tokens/s "
                      f"({self.new_tokens_per_s / self.old_tokens_per_s - 1:+.0%})")
        return (f"elastic: rank {self.died_rank} ({self.died_chip}, node {self.died_node}) died "
                f"(exit {self.exitcode}); re-planned on the {self.survivors} surviving chips "
                f"in {self.replan_s:.1f} s (the new plan uses {self.new_world}){change}; "
                f"resuming from step {self.resumed_step}")


@dataclass(frozen=True)
class ElasticRun:
    summary: RunSummary | None  # the last plan's run
    plan: Plan  # the plan that finished the job
    replans: tuple[Replan, ...]


def run_elastic(plan: Plan, config: TrainConfig, *, max_restarts: int = 3,
                say: Callable[[str], None] = print,
                replanner: Callable[[Plan, Plan], Plan] | None = None) -> ElasticRun:
    """Train ``plan`` to ``config.steps``, re-planning after each rank death (at most
    ``max_restarts`` times). ``replanner(old_plan, survivors_plan)`` chooses the next plan
    (default: the planner on the surviving chips)."""
    if not config.checkpoint_dir:
        raise RuntimeSetupError("--elastic needs --checkpoint-dir DIR (a restart resumes from "
                                "the newest complete save there)")
    replans: list[Replan] = []
    current, cfg = plan, config
    while True:
        try:
            summary = launch_local(current, TrainTask(cfg))[0]
            return ElasticRun(summary, current, tuple(replans))
        except RankDied as died:
            if len(replans) >= max_restarts:
                raise
            detected = time.time()
            _forget_fault()
            if cfg.metrics_path:
                absorb_rank_logs(cfg.metrics_path)
            nxt, seconds, survivors = _replan(current, died.rank, replanner)
            event = _event(len(replans) + 1, current, nxt, died, detected, seconds, cfg,
                           survivors)
            replans.append(event)
            _log(cfg.checkpoint_dir, event)
            say(event.line())
            current, cfg = nxt, dataclasses.replace(cfg, resume=True)


def _replan(plan: Plan, rank: int, replanner: Callable[[Plan, Plan], Plan] | None
            ) -> tuple[Plan, float, int]:
    role = rank_roles(plan, emulate=True)[rank]
    cluster, _ = without_chips(plan.cluster, {role.node: 1})
    start = time.monotonic()
    survivors = dataclasses.replace(plan, cluster=cluster)
    if replanner is not None:
        new = replanner(plan, survivors)
    else:
        new = plan_job(cluster, plan.model, plan.job, schedule=plan.schedule)
    return new, time.monotonic() - start, cluster.num_devices


def _event(attempt: int, old: Plan, new: Plan, died: RankDied, detected: float,
           seconds: float, cfg: TrainConfig, survivors: int) -> Replan:
    role = rank_roles(old, emulate=True)[died.rank]
    assert cfg.checkpoint_dir is not None
    folder = latest_complete(cfg.checkpoint_dir)
    step = 0 if folder is None else read_manifest(folder).step
    return Replan(
        attempt=attempt, died_rank=died.rank, died_chip=role.chip, died_node=role.node,
        exitcode=died.exitcode, detected_at=detected, resumed_step=step,
        old_world=old.world_size, survivors=survivors, new_world=new.world_size,
        old_tokens_per_s=estimate_tokens_per_s(old), new_tokens_per_s=estimate_tokens_per_s(new),
        replan_s=seconds)


def _forget_fault() -> None:
    """An injected death (``FAULT_ENV``) happens once: the restarted ranks must not die."""
    import os

    os.environ.pop(FAULT_ENV, None)


def _log(root: str, event: Replan) -> None:
    path = Path(root) / EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = dataclasses.asdict(event)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
