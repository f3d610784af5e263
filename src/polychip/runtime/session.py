"""A whole run around the per-rank :class:`~polychip.runtime.train.Trainer`: agree on the
emulation's dilation, train, gather every rank's records to rank 0 for the metrics file and
the summary; and the picklable task the launcher runs on every rank."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from polychip.costmodel.estimate import CostModel
from polychip.plan.plan import Plan
from polychip.runtime.checkpoint import Checkpointer
from polychip.runtime.checkpoint_manifest import latest_complete
from polychip.runtime.dilation import WarmupTiming, dilation_from
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.faults import injected_death, injected_slowdown
from polychip.runtime.metrics import (
    RunSummary,
    StepLog,
    StepRecord,
    rank_log_path,
    summarise,
    write_metrics,
)
from polychip.runtime.stopping import StopRequest
from polychip.runtime.topology import build_topology
from polychip.runtime.train import WARMUP_MIN_S, TrainConfig, Trainer


def agree_dilation(trainers: Sequence[Trainer]) -> float:
    """Collective: the dilation every rank uses. Each stage (its TP ranks together) times its
    step's compute alone, in turn, then all at once (the host's contention, other jobs
    included); every rank derives the same factor from all the timings
    (:func:`dilation_from`; several trainers: the largest)."""
    world = dist.get_world_size()
    leader = trainers[0].role.stage_ranks[0]  # the plans share their ranks and stages' TP
    alone: list[tuple[float, float]] = []
    try:
        for turn in range(world):
            dist.barrier()
            if turn == leader:
                alone = [(t.time_compute(), t.time_optimizer()) for t in trainers]
        dist.barrier()
        busy = [t.time_compute(2 * WARMUP_MIN_S) for t in trainers]
        mine = [t.warmup_timing(a, o, b) for t, (a, o), b in zip(trainers, alone, busy,
                                                                   strict=True)]
        gathered: list[list[WarmupTiming] | None] = [None] * world
        dist.all_gather_object(gathered, mine)
    except RuntimeError as exc:
        raise trainers[0].failure(None, "agreeing on the dilation", exc) from exc
    return max(dilation_from([g[i] for g in gathered if g is not None])
               for i in range(len(trainers)))


def estimate_tokens_per_s(plan: Plan) -> float:
    if plan.estimate is not None:
        return plan.estimate.tokens_per_s
    cost = CostModel(plan.cluster, plan.model, plan.job)
    return cost.evaluate(plan.replicas, plan.schedule, plan.zero1).tokens_per_s


def gather_summary(trainer: Trainer, records: list[StepRecord],
                   metrics_path: str | None = None, resumed_at: int = 0) -> RunSummary | None:
    """Collective: rank 0 gets every rank's records, writes the metrics file (a resumed run:
    after the earlier run's records of the steps before ``resumed_at``) and returns the
    run's summary; the other ranks return None."""
    gathered: list[list[StepRecord]] | None = (
        [[] for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None)
    try:
        dist.gather_object(records, gathered, dst=0)
    except RuntimeError as exc:
        raise trainer.failure(None, "gathering the metrics", exc) from exc
    if gathered is None:
        return None
    everything = [r for rank_records in gathered for r in rank_records]
    if metrics_path:
        write_metrics(metrics_path, everything, keep_before=resumed_at)
    phases = [2 * role.num_micro_batches * len(role.chunks) + 1
              for role in trainer.topology.roles]
    return summarise(everything, num_phases_per_step=phases,
                     estimate_tokens_per_s=estimate_tokens_per_s(trainer.plan))


def train(plan: Plan, rank: int, config: TrainConfig) -> RunSummary | None:
    """Train ``plan`` as plan rank ``rank`` (the process group is up); rank 0 returns the
    summary."""
    topology = build_topology(plan, rank, emulate=config.emulate, timeout=config.timeout)
    trainer = Trainer(plan, config, topology)
    checkpoints = (Checkpointer(trainer, config.checkpoint_dir, config.keep)
                   if config.checkpoint_dir else None)
    start = resume(checkpoints) if checkpoints is not None and config.resume else 0
    if config.emulate:
        trainer.use_dilation(config.dilation or agree_dilation([trainer]),
                             adaptive=config.dilation is None)
    records = run_logged(trainer, start, checkpoints)
    if config.export_hf:
        from polychip.runtime.hf_export import export_trained

        export_trained(trainer, config.export_hf)
    summary = gather_summary(trainer, records, config.metrics_path, resumed_at=start)
    if config.metrics_path:
        rank_log_path(config.metrics_path, trainer.role.rank).unlink(missing_ok=True)
    return summary


def resume(checkpoints: Checkpointer) -> int:
    """Collective: load the newest complete save (rank 0 chooses it for all); the step to
    continue from (0 when there is none)."""
    chosen = [None]
    if dist.get_rank() == 0:
        folder = latest_complete(checkpoints.root)
        chosen = [None if folder is None else str(folder)]
    dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        return 0
    step = checkpoints.load(chosen[0]).step
    steps = checkpoints.trainer.config.steps
    if step >= steps:
        raise RuntimeSetupError(f"{chosen[0]}: the run already took {step} steps, --steps is "
                                f"{steps} (the total); raise --steps to train on")
    return step


def run_logged(trainer: Trainer, start: int = 0,
               checkpoints: Checkpointer | None = None) -> list[StepRecord]:
    """``trainer.run`` from step ``start`` to the configured total; with a metrics path, each
    step's record is also appended to this rank's :class:`StepLog` as it ends, so a run that
    fails keeps the steps it finished (:func:`train` removes the log once rank 0 has written
    them all). After each step the ranks agree whether SIGINT/SIGTERM asked them to stop
    (:mod:`polychip.runtime.stopping`); with ``checkpoints``, they save every
    ``save_every`` steps, at the end, and when stopping."""
    config = trainer.config
    log = StepLog(config.metrics_path, trainer.role.rank) if config.metrics_path else None
    kill_at = injected_death(trainer.role.rank)
    slow = injected_slowdown(trainer.role.rank)

    def slow_from(step: int) -> None:  # the injected slow chip, from its step on
        if slow is not None and step >= slow[1]:
            trainer.clock.compute_factor = slow[0]

    stop = StopRequest()
    slow_from(start)

    def after(record: StepRecord) -> bool:
        if log is not None:
            log(record)
        if record.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        slow_from(record.step + 1)
        done, stopping = record.step + 1, stop.agreed()
        every = config.save_every and done % config.save_every == 0
        if checkpoints is not None and (stopping or every or done == config.steps):
            checkpoints.save(done)
        return stopping
    try:
        return trainer.run(config.steps - start, start=start,
                           progress=config.progress and trainer.reports, on_step=after)
    finally:
        if log is not None:
            log.close()
        if checkpoints is not None:
            checkpoints.wait()


@dataclass(frozen=True)
class TrainTask:
    """A picklable ``task(plan, rank)`` for the launcher: train and summarise."""

    config: TrainConfig

    @property
    def emulate(self) -> bool:
        return self.config.emulate

    @property
    def timeout(self) -> timedelta:
        return self.config.timeout

    def __call__(self, plan: Plan, rank: int) -> RunSummary | None:
        return train(plan, rank, self.config)
