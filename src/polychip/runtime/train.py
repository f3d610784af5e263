"""The training loop of one rank: its stage of its pipeline replica, from the plan.

Each rank builds only its stage (its layers; the embedding on a first stage, the head and loss
on a last one; its slice under tensor parallelism) and each step executes its program of the
plan's schedule (:mod:`polychip.runtime.pipeline`): forwards and backwards of its replica's
micro-batches (samples named by global index, so the split never changes the data), the sends
and receives between stages, the sample-weighted all-reduce of every gradient segment among
the ranks holding it (:mod:`polychip.runtime.data_parallel`), then AdamW (or SGD). A plan of
single-stage replicas is plain heterogeneous data parallelism: the same code, with no sends.

The executor times its phases through a clock (:mod:`polychip.runtime.clock`): a plain run's
only measures; with emulated chips :meth:`Trainer.use_dilation` injects an
:class:`~polychip.runtime.emulate.EmulatedClock`, whose compute phases last exactly
``dilation x`` the cost model's time for this rank's chip and work, and whose messages and
all-reduces take ``dilation x`` their modelled times. The dilation, unless given, comes from
a warm-up in which each stage times its step alone, then all at once
(:func:`polychip.runtime.session.agree_dilation`,
:func:`polychip.runtime.dilation.dilation_from`). Each step's record (:mod:`polychip.runtime.
metrics`) carries the clock's phases and the rank's measured peak memory
(:mod:`polychip.runtime.memory`). A whole run -- warm-up, steps, the gathered summary -- is
:mod:`polychip.runtime.session`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from polychip.plan.plan import Plan
from polychip.plan.schedule import Op, build_schedule
from polychip.runtime.clock import StepTiming, WallClock, stream_sync
from polychip.runtime.data import SampleStream, open_source
from polychip.runtime.data_parallel import StageGrads, loss_scale
from polychip.runtime.dilation import DilationGovernor, WarmupTiming, plan_step_target_s
from polychip.runtime.emulate import EmulatedClock, PhaseTargets, phase_targets
from polychip.runtime.errors import DistributedRunError, RuntimeSetupError
from polychip.runtime.grad_clip import tied_copies
from polychip.runtime.grad_layout import fused_runs
from polychip.runtime.memory import memory_meter
from polychip.runtime.metrics import StepRecord
from polychip.runtime.model import build_stage
from polychip.runtime.optim import StageOptimizer, make_optimizer
from polychip.runtime.p2p import P2P
from polychip.runtime.pipeline import StageRunner
from polychip.runtime.precision import LossScaler, precision_of, use_matmul_precision
from polychip.runtime.tensor_parallel import broadcast_from_leader
from polychip.runtime.topology import RankRole, Topology
from polychip.runtime.train_config import TrainConfig

__all__ = ["WARMUP_MIN_S", "TrainConfig", "Trainer", "make_optimizer", "reporting_rank"]

WARMUP_MIN_S = 0.15
"""Each stage times its step's compute, alone, for at least this long."""


def reporting_rank(roles: Sequence[RankRole]) -> int:
    """The rank that knows the global loss first and shows progress: the leader of replica
    0's last stage (rank 0 in a data-parallel plan)."""
    return next(r.rank for r in roles if r.replica == 0 and r.last_stage and r.is_leader)


class Trainer:
    """One rank's stage, data, gradient buffer, optimizer and clock for one plan."""

    def __init__(self, plan: Plan, config: TrainConfig, topology: Topology) -> None:
        self.plan, self.config, self.topology = plan, config, topology
        role = self.role = topology.role
        self.device = topology.device
        source = open_source(config.data, plan.model.vocab_size, config.max_corpus_bytes,
                             tokenizer=config.tokenizer)
        if source.vocab_size > plan.model.vocab_size:
            raise RuntimeSetupError(
                f"the data has {source.vocab_size} token ids, the model's vocab_size is "
                f"{plan.model.vocab_size}: use a model with a vocabulary at least as large")
        self.stream = SampleStream(source, plan.job.seq_len, config.seed)
        groups = topology.groups
        self.precision = precision_of(plan.job, config.dtype)
        use_matmul_precision(self.precision, self.device)
        tp = dataclasses.replace(groups.tp, sequence_parallel=plan.job.sequence_parallel,
                                 vocab_parallel=plan.job.vocab_parallel)
        self.model = build_stage(plan.model, role.chunks[0][0],
                                 role.chunks[-1][1], seed=config.seed, device=self.device,
                                 dtype=self.precision.optimizer_dtype,  # then the weights' own
                                 has_embedding=role.first_stage, has_head=role.last_stage,
                                 tp=tp, recompute=role.recompute, chunks=role.chunks)
        if config.init_from:  # before the buffers and master weights copy the weights
            from polychip.runtime.hf_weights import load_hf_into_stage

            load_hf_into_stage(self.model, config.init_from)
        schedule = build_schedule(plan, replicas=[role.replica])
        self.program = schedule.program_of(role.rank)
        segments = [a.segment for a in self.program.actions if a.op is Op.ALLREDUCE]
        self.grads = StageGrads(self.model, segments, fused_runs(segments, schedule.groups),
                                groups.pieces, has_loss=role.last_stage, tp_size=groups.tp.size,
                                chunks=role.chunks, param_dtype=self.precision.compute,
                                grad_dtype=self.precision.grad,
                                overlap=plan.job.overlap_grad_sync,
                                bucket_bytes=config.bucket_bytes, zero1=plan.zero1)
        self.scaler = LossScaler() if self.precision.loss_scaling else None
        self.optimizer = StageOptimizer(self.grads, config, self.precision, self.scaler,
                                        replica=role.replica, norm_skip=tied_copies(plan, role))
        self.lr_schedule = config.lr_schedule_of()  # state_dict(): the checkpoint's
        self.targets: PhaseTargets | None = (
            phase_targets(plan, role.replica, role.stage) if config.emulate else None)
        self.runner = StageRunner(
            program=self.program, model=self.model, role=role,
            p2p=P2P(groups.routes, self.device, stamped=config.emulate), stream=self.stream,
            grads=self.grads, optimizer=self.optimizer,
            loss_scale=loss_scale(role.batch_share, role.global_batch, role.num_micro_batches),
            activation_shape=(role.micro_batch_size, plan.job.seq_len, plan.model.hidden_size),
            device=self.device, failure=self.failure,
            clock=WallClock(stream_sync(self.device)), loss_scaler=self.scaler)
        self.memory = memory_meter(self.device, self.model, self.grads, self.optimizer)

    @property
    def sync(self) -> StageGrads:
        return self.grads

    @property
    def clock(self) -> WallClock:
        """The executor's clock: a :class:`WallClock`, or the :class:`EmulatedClock` of
        :meth:`use_dilation`."""
        return self.runner.clock

    @property
    def reports(self) -> bool:
        """Whether this rank shows the progress bar (it knows the global loss)."""
        return self.role.rank == reporting_rank(self.topology.roles)

    def use_dilation(self, dilation: float, *, adaptive: bool = False) -> None:
        """Emulate the plan's chip with ``dilation`` (inject an :class:`EmulatedClock`);
        ``adaptive``: raise it, on every rank at the same step, when overruns cost the
        emulated chips time (:class:`DilationGovernor`)."""
        if self.targets is None:
            raise RuntimeSetupError("use_dilation needs a TrainConfig with emulate=True "
                                    "(the emulated wire format is chosen when ranks start)")
        governor = (DilationGovernor(dilation, plan_step_target_s(self.plan))
                    if adaptive else None)
        self.runner.clock = EmulatedClock(self.targets, dilation, governor=governor,
                                          failure=self.failure,
                                          sync=stream_sync(self.device))

    @property
    def dilation(self) -> float | None:
        """The dilation of the next step (None: not emulated)."""
        return self.clock.dilation

    def raise_dilation_to(self, dilation: float) -> None:
        """Another trainer of this job had to raise the dilation: start from there too."""
        self.clock.raise_dilation_to(dilation)

    def time_compute(self, min_s: float = WARMUP_MIN_S) -> float:
        """Real seconds of one pass over this rank's micro-batches (forward and backward of
        each chunk, made-up inputs), unpadded: passes for at least ``min_s`` (at least 3), the
        median after the first (:meth:`StageRunner.compute_pass`). Gradients are zeroed
        after. A stage's TP ranks must call it together (their leader decides when to
        stop)."""
        passes: list[float] = []
        begin = time.perf_counter()
        while True:
            more = len(passes) < 3 or time.perf_counter() - begin < min_s
            if self.model.tp.size > 1:
                flag = torch.tensor([float(more)], device=self.device)
                more = bool(broadcast_from_leader(flag, self.model.tp).item())
            if not more:
                break
            start = time.perf_counter()
            self.runner.compute_pass()
            passes.append(time.perf_counter() - start)
        self.grads.zero_()
        return statistics.median(passes[1:])

    def time_optimizer(self) -> float:
        """Real seconds of an optimizer step, on a throwaway copy of the parameters (the
        median of 4 after one): the model and its optimizer stay untouched."""
        copies = [torch.nn.Parameter(p.detach().clone()) for p in self.grads.params]
        for c in copies:
            c.grad = torch.zeros_like(c)
        optimizer, opt = make_optimizer(self.config, copies), []
        for _ in range(5):
            start = time.perf_counter()
            optimizer.step()
            opt.append(time.perf_counter() - start)
        return statistics.median(opt[1:])

    def warmup_timing(self, alone_s: float, optimizer_s: float, busy_s: float
                      ) -> WarmupTiming:
        assert self.targets is not None
        t, target = self.targets, self.role.num_micro_batches * self.targets.micro_batch_s
        return WarmupTiming(
            host=socket.gethostname(), cores=len(os.sched_getaffinity(0)),
            compute_s=alone_s, busy_compute_s=busy_s, compute_target_s=target,
            optimizer_s=optimizer_s, optimizer_target_s=t.optimizer_s,
            step_target_s=target + t.optimizer_s + t.gradient_sync_s)

    def failure(self, step: int | None, what: str, exc: BaseException) -> DistributedRunError:
        role, where = self.role, "" if step is None else f" at step {step}"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return DistributedRunError(
            f"rank {role.rank} (replica {role.replica}, stage {role.stage}, chip {role.chip})"
            f"{where}: {what} failed: another rank died, or was silent for the "
            f"{self.config.timeout_s:.0f} s process-group timeout ({first_line})")

    def step(self, step: int) -> StepRecord:
        clock = self.clock
        with self.memory.step():
            clock.start_step()
            self.optimizer.set_lr(self.lr_schedule.lr_at(step))
            self.grads.zero_()
            stats = self.runner.run(step)
            timing = clock.finish_step()
        clock.after_step(step)  # the emulation's bookkeeping, between steps
        share = self.role.batch_share / self.role.global_batch
        loss = None if stats.local_loss is None else stats.local_loss / share
        return self._record(step, timing, loss, stats.peak_activations)

    def _record(self, step: int, timing: StepTiming, loss: float | None,
                peak_activations: int) -> StepRecord:
        role, m = self.role, timing.measured
        peak, counted = self.memory.peak()
        return StepRecord(
            step=step, rank=role.rank, replica=role.replica, stage=role.stage,
            tp_rank=role.tp_rank, chip=role.chip, island=role.island,
            layers=role.chunks, loss=loss, global_loss=self.grads.loss,
            samples=role.batch_share, tokens=role.batch_share * self.plan.job.seq_len,
            seconds=m.seconds, compute_s=m.compute_s, pipeline_wait_s=m.pipeline_wait_s,
            grad_sync_s=m.grad_sync_s, optimizer_s=m.optimizer_s, idle_s=m.idle_s,
            peak_activations=peak_activations, peak_memory_bytes=peak,
            memory_kind=self.memory.kind, memory=counted,
            emulated=timing.emulated is not None, dilation=timing.dilation,
            emulated_time=timing.emulated, padding_s=timing.padding_s,
            overruns=timing.overruns, compute_overruns=timing.compute_overruns,
            lost_s=timing.lost_s,
            lr=self.lr_schedule.lr_at(step), grad_norm=self.optimizer.grad_norm,
            finished_at=time.time())

    def run(self, steps: int, *, start: int = 0, progress: bool = False,
            label: str = "training",
            on_step: Callable[[StepRecord], bool | None] | None = None) -> list[StepRecord]:
        """Steps ``start .. start + steps - 1``; a progress bar (loss, tokens/s) if asked;
        ``on_step(record)`` as each step ends (True: stop after this step)."""
        indices = range(start, start + steps)
        if not progress:
            records = []
            for step in indices:
                records.append(self.step(step))
                if on_step is not None and on_step(records[-1]):
                    break
            return records
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        records: list[StepRecord] = []
        tokens = self.plan.job.tokens_per_step
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}"),
                   TextColumn("{task.fields[tps]:,.0f} tok/s wall"))
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(label, total=start + steps, completed=start,
                                loss=float("nan"), tps=0.0)
            for step in indices:
                rec = self.step(step)
                records.append(rec)
                bar.update(task, advance=1, loss=rec.global_loss, tps=tokens / rec.seconds)
                if on_step is not None and on_step(rec):
                    break
        return records
