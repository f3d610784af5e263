"""The training loop of one rank: heterogeneous data parallelism over the plan's replicas.

Each replica trains on its share of the global batch (samples named by global index, so the
split never changes the data), in ``num_micro_batches`` micro-batches accumulated into one flat
gradient buffer; one sample-weighted all-reduce (flat inside an island, hierarchical across
islands) makes every rank's gradient that of the whole batch; then AdamW (or SGD).

With emulated chips every compute phase (forward + backward of a micro-batch, the optimizer
step) lasts exactly ``dilation x`` the cost model's time for this rank's chip and work, and the
real gradient all-reduce is followed by ``dilation x`` the cost model's all-reduce time (the
emulated links; the host's own all-reduce is nearly free in chip time). The dilation, unless
given, comes from a timed warm-up: the smallest round factor that fits the slowest real phase
of any rank, with a margin (:func:`agree_dilation`).
"""

from __future__ import annotations

import resource
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
from polychip.runtime.emulate import PhaseClock, PhaseTargets, dilation_for, phase_targets
from polychip.runtime.errors import DistributedRunError, RuntimeSetupError
from polychip.runtime.metrics import RunSummary, StepRecord, summarise, write_metrics
from polychip.runtime.model import ModelConfig, build_stage, loss_fn
from polychip.runtime.topology import Topology, build_topology
from polychip.spec.model import ModelSpec

WARMUP_WINDOW_S = 0.6
"""How long every rank computes, unpadded, to measure the host's speed under contention."""
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

    @property
    def num_phases_per_step(self) -> int:
        return self.role.num_micro_batches + 1

    def use_dilation(self, dilation: float) -> None:
        self.clock = PhaseClock(dilation)

    def measure_ratio(self, window_s: float = WARMUP_WINDOW_S, optimizer_repeats: int = 5
                      ) -> float:
        """Worst (real seconds / cost-model seconds) of this rank's compute phases, timed
        unpadded while every rank computes (the worst contention a step can see): forward +
        backward of its micro-batches, round and round for ``window_s`` (the first one
        warms up, the slowest of the rest counts), then the optimizer (median: it is short
        enough for one scheduler time slice to double it). Leaves the model, its gradients
        and optimizer untouched. Run it on every rank at once."""
        assert self.targets is not None and optimizer_repeats >= 2
        role, fwd_bwd = self.role, []
        begin = end = time.perf_counter()
        while end - begin < window_s or len(fwd_bwd) < 3:
            x, y = self.stream.batch_for(0, role.micro_batch(len(fwd_bwd) % role.num_micro_batches))
            start = time.perf_counter()
            loss_fn(self.model(x.to(self.device)), y.to(self.device)).backward()
            end = time.perf_counter()
            fwd_bwd.append(end - start)
        self.sync.zero_()
        copies = [torch.nn.Parameter(p.detach().clone()) for p in self.sync.params]
        for c in copies:
            c.grad = torch.zeros_like(c)
        optimizer, opt = make_optimizer(self.config, copies), []
        for _ in range(optimizer_repeats):
            start = time.perf_counter()
            optimizer.step()
            opt.append(time.perf_counter() - start)
        return max(max(fwd_bwd[1:]) / self.targets.micro_batch_s,
                   statistics.median(opt[1:]) / self.targets.optimizer_s)

    def failure(self, step: int | None, what: str, exc: BaseException) -> DistributedRunError:
        role, where = self.role, "" if step is None else f" at step {step}"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return DistributedRunError(
            f"rank {role.rank} (replica {role.replica}, chip {role.chip}){where}: {what} "
            f"failed: another rank died or stopped answering within the "
            f"{self.config.timeout_s:.0f} s process-group timeout ({first_line})")

    def step(self, step: int) -> StepRecord:
        role, targets, clock = self.role, self.targets, self.clock
        before = clock.summary()
        begin = time.perf_counter()
        self.sync.zero_()
        num_micro = role.num_micro_batches
        for m in range(num_micro):
            x, y = self.stream.batch_for(step, role.micro_batch(m))
            x, y = x.to(self.device), y.to(self.device)
            with clock.phase("forward_backward", targets and targets.micro_batch_s):
                loss = loss_fn(self.model(x), y) / num_micro
                loss.backward()
                self.sync.add_loss_(loss)
        local_loss = self.sync.local_loss  # also waits for the device
        sync_begin = time.perf_counter()
        try:
            global_loss = self.sync.sync()
        except RuntimeError as exc:
            raise self.failure(step, "the gradient all-reduce", exc) from exc
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
            dilation=clock.dilation, overruns=after.num_overruns - before.num_overruns)

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
    """Collective: the dilation every rank uses, from each rank's worst warm-up ratio."""
    dist.barrier()  # every rank computes at once: the warm-up sees the host's contention
    worst = torch.tensor([max(t.measure_ratio() for t in trainers)], dtype=torch.float64)
    try:
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    except RuntimeError as exc:
        raise trainers[0].failure(None, "agreeing on the dilation", exc) from exc
    return dilation_for(float(worst.item()))


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
        trainer.use_dilation(config.dilation or agree_dilation([trainer]))
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
