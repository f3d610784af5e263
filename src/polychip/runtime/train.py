"""The training loop of one rank: heterogeneous data parallelism over the plan's replicas.

Each replica trains on its share of the global batch (samples named by global index, so the
split never changes the data), in ``num_micro_batches`` micro-batches accumulated into one flat
gradient buffer; one sample-weighted all-reduce (flat inside an island, hierarchical across
islands) makes every rank's gradient that of the whole batch; then AdamW (or SGD).

With emulated chips every compute phase (forward + backward of a micro-batch, the optimizer
step) lasts exactly ``dilation x`` the cost model's time for this rank's chip and work, and the
real gradient all-reduce is followed by ``dilation x`` the cost model's all-reduce time (the
emulated links; the host's own all-reduce is nearly free in chip time). A replica's
micro-batches have chained slots (a late one is made up by the next). The dilation, unless
given, comes from a warm-up in which each rank times its step alone (:func:`agree_dilation`,
:func:`polychip.runtime.emulate.dilation_from`).
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

from polychip.costmodel.estimate import CostModel
from polychip.plan.plan import Plan
from polychip.runtime.data import DEFAULT_CORPUS_MAX_BYTES, SampleStream, open_source
from polychip.runtime.data_parallel import GradSync
from polychip.runtime.emulate import (
    DilationGovernor,
    PhaseClock,
    PhaseTargets,
    WarmupTiming,
    dilation_from,
    phase_targets,
    plan_step_target_s,
)
from polychip.runtime.errors import DistributedRunError, RuntimeSetupError
from polychip.runtime.metrics import RunSummary, StepRecord, summarise, write_metrics
from polychip.runtime.model import ModelConfig, build_stage, loss_fn
from polychip.runtime.topology import Topology, build_topology
from polychip.spec.model import ModelSpec

WARMUP_MIN_S = 0.15
"""Each rank times its step's compute, alone, for at least this long."""
GRADIENT_SYNC = "gradient_sync"
"""The emulated pause after the real all-reduce (a communication slot, not a compute phase)."""
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20
    emulate: bool = False
    dilation: float | None = None  # emulated clocks: None -> chosen by a timed warm-up
    data: str | None = None  # None: the Python standard library's sources
    seed: int = 0
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    timeout_s: float = 120.0  # process-group timeout: a silent rank fails the run after this
    max_corpus_bytes: int = DEFAULT_CORPUS_MAX_BYTES
    metrics_path: str | None = None
    progress: bool = False  # a progress bar on rank 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise RuntimeSetupError(f"steps={self.steps}: train at least 1 step")
        if self.dtype not in DTYPES:
            raise RuntimeSetupError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise RuntimeSetupError(f"optimizer={self.optimizer!r}: choose adamw or sgd")
        if self.dilation is not None and not (self.emulate and self.dilation > 0):
            raise RuntimeSetupError(
                f"dilation={self.dilation}: a dilation needs emulated chips (--emulate) and "
                f"must be > 0; leave it out to choose it from a warm-up")

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout_s)


def model_config(spec: ModelSpec) -> ModelConfig:
    return ModelConfig(spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads,
                       spec.ffn_hidden_size, spec.vocab_size, tie_embeddings=spec.tie_embeddings)


def make_optimizer(config: TrainConfig, params: Sequence[torch.nn.Parameter]
                   ) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    fused = params[0].device.type in ("cpu", "cuda")  # one fused kernel (fast on the CPU too)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             fused=fused or None)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """The device allocator's peak, or the process's peak resident memory on the CPU."""
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(module, "max_memory_allocated"):
        return int(module.max_memory_allocated(device)), "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host-rss"


class Trainer:
    """One rank's model, data, gradient sync, optimizer and clock for one plan."""

    def __init__(self, plan: Plan, config: TrainConfig, topology: Topology) -> None:
        self.plan, self.config, self.topology = plan, config, topology
        role = self.role = topology.role
        self.device = topology.device
        source = open_source(config.data, plan.model.vocab_size, config.max_corpus_bytes)
        if source.vocab_size > plan.model.vocab_size:
            raise RuntimeSetupError(
                f"the data has {source.vocab_size} token ids, the model's vocab_size is "
                f"{plan.model.vocab_size}: use a model with a vocabulary at least as large")
        self.stream = SampleStream(source, plan.job.seq_len, config.seed)
        self.model = build_stage(model_config(plan.model), role.layer_start, role.layer_end,
                                 seed=config.seed, device=self.device,
                                 dtype=DTYPES[config.dtype])
        self.sync = GradSync(list(self.model.parameters()), role.batch_share,
                             role.global_batch, topology.dp_allreduce)
        self.optimizer = make_optimizer(config, self.sync.params)
        self.targets: PhaseTargets | None = (
            phase_targets(plan, role.replica, role.stage) if config.emulate else None)
        self.clock = PhaseClock(None)
        self.governor: DilationGovernor | None = None
        self._lost_reported = 0.0

    def use_dilation(self, dilation: float, *, adaptive: bool = False) -> None:
        """Emulate with ``dilation``; ``adaptive``: raise it, on every rank at the same step,
        when overruns cost the emulated chips time (:class:`DilationGovernor`)."""
        self.clock = PhaseClock(dilation)
        self.governor = (DilationGovernor(dilation, plan_step_target_s(self.plan))
                         if adaptive else None)

    @property
    def dilation(self) -> float | None:
        """The dilation of the next step (None: not emulated)."""
        return self.governor.dilation if self.governor is not None else self.clock.dilation

    def raise_dilation_to(self, dilation: float) -> None:
        """Another trainer of this job had to raise the dilation: start from there too."""
        if self.clock.dilation is not None and dilation > self.clock.dilation:
            self.clock.set_dilation(dilation)
            if self.governor is not None:
                self.governor.dilation = dilation

    def time_compute(self, min_s: float = WARMUP_MIN_S) -> float:
        """Real seconds of one pass over this rank's micro-batches, unpadded: passes for at
        least ``min_s`` (at least 3), the median after the first. Gradients are zeroed after."""
        role, passes = self.role, []
        begin = time.perf_counter()
        while len(passes) < 3 or time.perf_counter() - begin < min_s:
            start = time.perf_counter()
            for m in range(role.num_micro_batches):
                x, y = self.stream.batch_for(0, role.micro_batch(m))
                loss_fn(self.model(x.to(self.device)), y.to(self.device)).backward()
            passes.append(time.perf_counter() - start)
        self.sync.zero_()
        return statistics.median(passes[1:])

    def time_optimizer(self) -> float:
        """Real seconds of an optimizer step, on a throwaway copy of the parameters (the
        median of 4 after one): the model and its optimizer stay untouched."""
        copies = [torch.nn.Parameter(p.detach().clone()) for p in self.sync.params]
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
            f"rank {role.rank} (replica {role.replica}, chip {role.chip}){where}: {what} "
            f"failed: another rank died, or was silent for the {self.config.timeout_s:.0f} s "
            f"process-group timeout ({first_line})")

    def step(self, step: int) -> StepRecord:
        role, targets, clock = self.role, self.targets, self.clock
        if self.governor is not None and self.governor.dilation != clock.dilation:
            clock.set_dilation(self.governor.dilation)  # raised at the end of the last step
        before = clock.summary()
        begin = time.perf_counter()
        self.sync.zero_()
        num_micro = role.num_micro_batches
        for m in range(num_micro):
            x, y = self.stream.batch_for(step, role.micro_batch(m))
            x, y = x.to(self.device), y.to(self.device)
            with clock.phase("forward_backward", targets and targets.micro_batch_s,
                             chain=m > 0):
                loss = loss_fn(self.model(x), y) / num_micro
                loss.backward()
                self.sync.add_loss_(loss)
        local_loss = self.sync.local_loss  # also waits for the device
        lost = clock.summary().lost_s  # lateness since the last report (optimizer's included)
        late, self._lost_reported = lost - self._lost_reported, lost
        sync_begin = time.perf_counter()
        try:
            global_loss, all_late = self.sync.sync(late)
        except RuntimeError as exc:
            raise self.failure(step, "the gradient all-reduce", exc) from exc
        if self.governor is not None:
            self.governor.observe(all_late)  # the same inputs, so the same answer, everywhere
        if targets is not None:  # emulated links: the all-reduce, then its modelled time
            with clock.phase(GRADIENT_SYNC, targets.gradient_sync_s):
                pass
        sync_end = time.perf_counter()
        with clock.phase("optimizer", targets and targets.optimizer_s):
            self.optimizer.step()
        end = time.perf_counter()
        after = clock.summary()
        memory, kind = peak_memory(self.device)
        return StepRecord(
            step=step, rank=role.rank, replica=role.replica, stage=role.stage, chip=role.chip,
            island=role.island, loss=local_loss, global_loss=global_loss,
            samples=role.batch_share, tokens=role.batch_share * self.plan.job.seq_len,
            seconds=end - begin, compute_s=(sync_begin - begin) + (end - sync_end),
            real_compute_s=after.compute_s - before.compute_s, wait_s=sync_end - sync_begin,
            peak_memory_bytes=memory, memory_kind=kind, emulated=clock.emulated,
            dilation=before.dilation, overruns=after.num_overruns - before.num_overruns,
            lost_s=after.lost_s - before.lost_s)

    def run(self, steps: int, *, start: int = 0, progress: bool = False,
            label: str = "training") -> list[StepRecord]:
        """Steps ``start .. start + steps - 1``; a progress bar (loss, tokens/s) if asked."""
        indices = range(start, start + steps)
        if not progress:
            return [self.step(step) for step in indices]
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        records: list[StepRecord] = []
        tokens = self.plan.job.tokens_per_step
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}"),
                   TextColumn("{task.fields[tps]:,.0f} tok/s wall"))
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(label, total=steps, loss=float("nan"), tps=0.0)
            for step in indices:
                rec = self.step(step)
                records.append(rec)
                bar.update(task, advance=1, loss=rec.global_loss, tps=tokens / rec.seconds)
        return records


def agree_dilation(trainers: Sequence[Trainer]) -> float:
    """Collective: the dilation every rank uses. Each rank times its step's compute alone, in
    turn, then all at once (the host's contention, other jobs included); every rank derives
    the same factor from all the timings (:func:`dilation_from`; several trainers: the
    largest)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    alone: list[tuple[float, float]] = []
    try:
        for turn in range(world):
            dist.barrier()
            if turn == rank:
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
                   metrics_path: str | None = None) -> RunSummary | None:
    """Collective: rank 0 gets every rank's records, writes the metrics file and returns the
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
        write_metrics(metrics_path, everything)
    phases = [role.num_micro_batches + 1 for role in trainer.topology.roles]
    return summarise(everything, num_phases_per_step=phases,
                     estimate_tokens_per_s=estimate_tokens_per_s(trainer.plan))


def train(plan: Plan, rank: int, config: TrainConfig) -> RunSummary | None:
    """Train ``plan`` as plan rank ``rank`` (the process group is up); rank 0 returns the
    summary."""
    topology = build_topology(plan, rank, emulate=config.emulate, timeout=config.timeout)
    trainer = Trainer(plan, config, topology)
    if config.emulate:
        trainer.use_dilation(config.dilation or agree_dilation([trainer]),
                             adaptive=config.dilation is None)
    records = trainer.run(config.steps, progress=config.progress and rank == 0)
    return gather_summary(trainer, records, config.metrics_path)


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
