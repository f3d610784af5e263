"""What a run measured: one record per step per rank (JSON lines), and the run's summary.

The phase fields of a record (``compute_s``, ``pipeline_wait_s``, ``grad_sync_s``,
``optimizer_s``, ``idle_s``; :mod:`polychip.runtime.clock`) are wall seconds measured on this
host and sum to the step's ``seconds``. With emulated chips they measure the host playing the
chips (the emulation's sleeps included, ``padding_s`` of them), and ``emulated_time`` gives the
same phases in emulated chip time (:mod:`polychip.runtime.emulate`): what an estimate of the
plan should be compared with. Field by field: docs/runtime.md, "Metrics".
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from polychip.runtime.clock import PhaseSeconds
from polychip.runtime.memory import MemoryCount

METRICS_VERSION = 3


@dataclass(frozen=True)
class StepRecord:
    """One rank's step. ``loss`` is its replica's mean loss, ``global_loss`` the whole batch's
    (both only on a last-stage rank, which computes the loss; None elsewhere)."""

    step: int
    rank: int
    replica: int
    stage: int
    tp_rank: int
    chip: str
    island: str
    layers: tuple[tuple[int, int], ...]  # [start, end) of its blocks, per model chunk
    loss: float | None
    global_loss: float | None
    samples: int
    tokens: int
    seconds: float  # measured: the step's wall seconds on this rank
    compute_s: float
    pipeline_wait_s: float
    grad_sync_s: float
    optimizer_s: float
    idle_s: float
    peak_activations: int  # most micro-batches whose activations the stage held at once
    peak_memory_bytes: int
    memory_kind: str  # "device-allocator" or "cpu-tensors" (runtime.memory)
    memory: MemoryCount | None  # cpu-tensors: what was counted
    emulated: bool
    dilation: float | None
    emulated_time: PhaseSeconds | None  # emulated chip time of the same phases (emulated)
    padding_s: float  # emulation: seconds slept in slots and links, inside the phases
    overruns: int  # phases of this step whose real work ran past the emulated slot
    lost_s: float  # how much later than the emulated chip this rank's step work finished
    lr: float | None = None  # the step's learning rate
    grad_norm: float | None = None  # the global gradient norm before clipping (when clipping)
    finished_at: float | None = None  # Unix time (this host's clock) when the step ended
    compute_overruns: int = 0  # of ``overruns``, forward and backward phases
    version: int = METRICS_VERSION

    @property
    def measured(self) -> PhaseSeconds:
        return PhaseSeconds(self.seconds, self.compute_s, self.pipeline_wait_s,
                            self.grad_sync_s, self.optimizer_s, self.idle_s)

    @property
    def timed(self) -> PhaseSeconds:
        """The figures a plan's estimate is held against: emulated chip time when the chips
        were emulated, else the measured ones."""
        return self.emulated_time if self.emulated_time is not None else self.measured

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def write_metrics(path: str | Path, records: Iterable[StepRecord], keep_before: int = 0
                  ) -> None:
    """Write records as JSON lines, ordered by (step, rank); ``keep_before`` > 0 (a resumed
    run): the file's earlier lines of the steps before it stay in front."""
    path = Path(path)
    ordered = sorted(records, key=lambda r: (r.step, r.rank))
    earlier = []
    if keep_before and path.is_file():
        earlier = [line for line in path.read_text().splitlines(keepends=True)
                   if line.strip() and json.loads(line).get("step", keep_before) < keep_before]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(earlier) + "".join(r.to_json() + "\n" for r in ordered))


def rank_log_path(path: str | Path, rank: int) -> Path:
    """Where rank ``rank`` appends its records step by step while the run goes on."""
    return Path(f"{path}.rank{rank}")


class StepLog:
    """One rank's records, appended and flushed as each step ends, so that a run that fails
    leaves on disk every step it finished (``OUT.jsonl.rank<N>``, next to ``OUT.jsonl``)."""

    def __init__(self, path: str | Path, rank: int) -> None:
        self.path = rank_log_path(path, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")

    def __call__(self, record: StepRecord) -> None:
        self._file.write(record.to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def absorb_rank_logs(path: str | Path) -> int:
    """After a run that failed: the steps its ranks logged (``OUT.jsonl.rank<N>``) join the
    metrics file's records, ordered by (step, rank), and the rank logs go; how many were
    added. A run resumed from a save then keeps those before its step (:func:`write_metrics`)."""
    path = Path(path)
    logs = sorted(path.parent.glob(path.name + ".rank*"))
    records = read_metrics(path) if path.is_file() else []
    added = [r for log in logs for r in read_metrics(log)]
    ordered = sorted(records + added, key=lambda r: (r["step"], r["rank"]))
    path.write_text("".join(json.dumps(r) + "\n" for r in ordered))
    for log in logs:
        log.unlink()
    return len(added)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class StageSummary:
    """One stage of one replica (its TP leader's records): mean seconds per steady step by
    phase, measured on this host and (emulated runs) in emulated chip time."""

    replica: int
    stage: int
    chip: str
    layers: tuple[tuple[int, int], ...]
    batch_share: int
    measured: PhaseSeconds
    emulated: PhaseSeconds | None
    peak_activations: int
    peak_memory_bytes: int
    memory_kind: str

    @property
    def timed(self) -> PhaseSeconds:
        return self.emulated if self.emulated is not None else self.measured


@dataclass(frozen=True)
class RunSummary:
    """The run in a few figures (rank 0 builds it from every rank's records). Step 0 is
    left out of the times (warm-up) when there are more steps."""

    steps: int
    world_size: int
    tokens_per_step: int
    emulated: bool
    dilation: float | None  # the last step's (raised from dilation_start after overruns)
    dilation_start: float | None
    wall_tokens_per_s: float  # measured on this host
    tokens_per_s: float  # emulated chip time when emulated, else measured (= wall)
    ideal_tokens_per_s: float  # same basis: sum over replicas of tokens / slowest stage's work
    estimate_tokens_per_s: float | None  # the plan's cost-model estimate
    losses: tuple[float, ...]  # global loss per step
    num_overruns: int
    num_phases: int
    lost_fraction: float  # worst rank: its emulation lateness / its run's wall time
    stages: tuple[StageSummary, ...] = field(default_factory=tuple)

    @property
    def time_basis(self) -> str:
        """What ``tokens_per_s``, ``step_time_s`` and the ideal are: "emulated" chip time or
        "measured" wall time."""
        return "emulated" if self.emulated else "measured"

    @property
    def step_time_s(self) -> float:
        return self.tokens_per_step / self.tokens_per_s

    @property
    def wall_step_time_s(self) -> float:
        return self.tokens_per_step / self.wall_tokens_per_s

    @property
    def loss_first(self) -> float:
        return self.losses[0]

    @property
    def loss_last(self) -> float:
        return self.losses[-1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loss_first"], out["loss_last"] = self.loss_first, self.loss_last
        out["step_time_s"], out["wall_step_time_s"] = self.step_time_s, self.wall_step_time_s
        out["time_basis"] = self.time_basis
        return out


def mean_phases(rows: Sequence[PhaseSeconds]) -> PhaseSeconds:
    """Phase by phase mean (means, unlike medians, still add up to the mean step)."""
    def mean(key: str) -> float:
        return statistics.fmean(getattr(r, key) for r in rows)
    return PhaseSeconds(mean("seconds"), mean("compute_s"), mean("pipeline_wait_s"),
                        mean("grad_sync_s"), mean("optimizer_s"), mean("idle_s"))


def summarise(records: Sequence[StepRecord], *, num_phases_per_step: Sequence[int],
              estimate_tokens_per_s: float | None) -> RunSummary:
    """``num_phases_per_step``: compute phases each rank runs per step (2 x micro-batches +
    1). A step lasts what its slowest rank's step lasts: the step time is the largest of the
    ranks' mean steady step times (wall, and emulated chip time when emulated); losses are
    those of the lowest rank that has them."""
    steps = sorted({r.step for r in records})
    ranks = sorted({r.rank for r in records})
    steady = set(steps[1:] if len(steps) > 1 else steps)
    by_rank = {rank: [r for r in records if r.rank == rank and r.step in steady]
               for rank in ranks}
    first = min(records, key=lambda r: (r.step, r.rank))
    last = max((r for r in records if r.rank == ranks[0]), key=lambda r: r.step)
    loss_rank = min(r.rank for r in records if r.global_loss is not None)
    losses = {r.step: r.global_loss for r in records if r.rank == loss_rank}
    leaders = [r for r in records if r.step == steps[0] and r.tp_rank == 0]
    tokens_per_step = sum(r.tokens for r in leaders if r.stage == 0)
    wall_step = max(statistics.fmean(r.seconds for r in mine) for mine in by_rank.values())
    step = max(statistics.fmean(r.timed.seconds for r in mine) for mine in by_rank.values())
    stages, slowest = [], {}
    for leader in sorted(leaders, key=lambda r: r.rank):
        mine = by_rank[leader.rank]
        emulated = [r.emulated_time for r in mine if r.emulated_time is not None]
        st = StageSummary(
            leader.replica, leader.stage, leader.chip, tuple((a, b) for a, b in leader.layers),
            leader.samples, mean_phases([r.measured for r in mine]),
            mean_phases(emulated) if emulated else None,
            max(r.peak_activations for r in mine), max(r.peak_memory_bytes for r in mine),
            leader.memory_kind)
        stages.append(st)
        work = st.timed.compute_s + st.timed.optimizer_s
        slowest[leader.replica] = max(slowest.get(leader.replica, 0.0), work)
    ideal = sum(next(r.tokens for r in leaders if r.replica == rep) / work
                for rep, work in slowest.items() if work > 0)
    return RunSummary(
        steps=len(steps), world_size=len(ranks), tokens_per_step=tokens_per_step,
        emulated=first.emulated, dilation=last.dilation, dilation_start=first.dilation,
        wall_tokens_per_s=tokens_per_step / wall_step, tokens_per_s=tokens_per_step / step,
        ideal_tokens_per_s=ideal, estimate_tokens_per_s=estimate_tokens_per_s,
        losses=tuple(float(losses[s]) for s in steps),  # type: ignore[arg-type]
        num_overruns=sum(r.overruns for r in records),
        num_phases=len(steps) * sum(num_phases_per_step),
        lost_fraction=max(sum(r.lost_s for r in records if r.rank == rank)
                          / sum(r.seconds for r in records if r.rank == rank)
                          for rank in ranks),
        stages=tuple(stages))
