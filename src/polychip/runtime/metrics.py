"""What a run measured: one record per step per rank (JSON lines), and the run's summary.

Times are wall seconds on this machine. With emulated chips every compute phase lasts
``dilation x`` the cost model's time, so *chip-time* figures (what the emulated cluster would
do) are wall figures divided by the step's dilation; the summary gives both and says they
were emulated.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METRICS_VERSION = 2


@dataclass(frozen=True)
class StepRecord:
    """One rank's step. ``loss`` is its replica's mean loss, ``global_loss`` the whole batch's
    (both only on a last-stage rank, which computes the loss; None elsewhere). ``compute_s`` is
    the wall time of its compute phases (forward, backward, optimizer; padded when emulated),
    ``real_compute_s`` the time the real computation took, ``wait_s`` the rest of its
    communication: ``recv_wait_s`` waiting for activations and gradients from neighbouring
    stages (pipeline bubbles included), ``sync_s`` the gradient all-reduces (communication
    plus waiting for the other holders). ``peak_activations``: most micro-batches whose
    activations the stage held at once."""

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
    seconds: float
    compute_s: float
    real_compute_s: float
    wait_s: float
    recv_wait_s: float
    sync_s: float
    peak_activations: int
    peak_memory_bytes: int
    memory_kind: str  # "device" (allocator peak) or "host-rss" (process peak, CPU runs)
    emulated: bool
    dilation: float | None
    overruns: int  # compute phases of this step whose real work ran past the emulated slot
    lost_s: float  # how much later than the emulated chip this rank's step work finished
    version: int = METRICS_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def write_metrics(path: str | Path, records: Iterable[StepRecord]) -> None:
    """Write records as JSON lines, ordered by (step, rank)."""
    ordered = sorted(records, key=lambda r: (r.step, r.rank))
    Path(path).write_text("".join(r.to_json() + "\n" for r in ordered))


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


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class StageSummary:
    """One stage of one replica (its TP leader's figures), median seconds per step, wall."""

    replica: int
    stage: int
    chip: str
    layers: tuple[tuple[int, int], ...]
    batch_share: int
    compute_s: float
    wait_s: float  # recv_wait_s + sync_s
    recv_wait_s: float
    sync_s: float
    peak_activations: int


@dataclass(frozen=True)
class RunSummary:
    """The run in a few figures (rank 0 builds it from every rank's records)."""

    steps: int
    world_size: int
    tokens_per_step: int
    emulated: bool
    dilation: float | None  # the last step's (raised from dilation_start after overruns)
    dilation_start: float | None
    wall_tokens_per_s: float  # measured on this machine, steady state (step 0 left out)
    tokens_per_s: float  # chip time: wall x dilation when emulated, else wall
    ideal_tokens_per_s: float  # chip time: sum over replicas of tokens / slowest stage compute
    estimate_tokens_per_s: float | None  # the plan's cost-model estimate
    losses: tuple[float, ...]  # global loss per step
    num_overruns: int
    num_phases: int
    lost_fraction: float  # worst rank: its emulation lateness / its run's wall time
    stages: tuple[StageSummary, ...] = field(default_factory=tuple)

    @property
    def step_time_s(self) -> float:
        """Measured seconds per step in chip time (wall / dilation when emulated)."""
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
        return out


def summarise(records: Sequence[StepRecord], *, num_phases_per_step: Sequence[int],
              estimate_tokens_per_s: float | None) -> RunSummary:
    """``num_phases_per_step``: compute phases each rank runs per step (2 x micro-batches +
    1). Step times are rank 0's; losses are those of the lowest rank that has them."""
    steps = sorted({r.step for r in records})
    ranks = sorted({r.rank for r in records})
    first = next(r for r in records if r.rank == ranks[0])
    rank0 = {r.step: r for r in records if r.rank == ranks[0]}
    loss_rank = min(r.rank for r in records if r.global_loss is not None)
    losses = {r.step: r.global_loss for r in records if r.rank == loss_rank}
    leaders = [r for r in records if r.step == steps[0] and r.tp_rank == 0]
    tokens_per_step = sum(r.tokens for r in leaders if r.stage == 0)
    steady = steps[1:] if len(steps) > 1 else steps

    def scale(r: StepRecord) -> float:  # chip seconds per wall second of this step
        return 1.0 / r.dilation if r.emulated and r.dilation else 1.0

    tokens = tokens_per_step * len(steady)
    wall = tokens / sum(rank0[s].seconds for s in steady)
    chip = tokens / sum(rank0[s].seconds * scale(rank0[s]) for s in steady)
    stages, slowest = [], {}
    for leader in sorted(leaders, key=lambda r: r.rank):
        mine = [r for r in records if r.rank == leader.rank and r.step in steady]

        def median(key: str, mine: list[StepRecord] = mine) -> float:
            return statistics.median(getattr(r, key) for r in mine)
        stages.append(StageSummary(
            leader.replica, leader.stage, leader.chip,
            tuple((a, b) for a, b in leader.layers), leader.samples,
            median("compute_s"), median("wait_s"), median("recv_wait_s"), median("sync_s"),
            max(r.peak_activations for r in mine)))
        chip_compute = statistics.median(r.compute_s * scale(r) for r in mine)
        slowest[leader.replica] = max(slowest.get(leader.replica, 0.0), chip_compute)
    ideal = sum(next(r.tokens for r in leaders if r.replica == rep) / compute
                for rep, compute in slowest.items() if compute > 0)
    last = rank0[steps[-1]]
    return RunSummary(
        steps=len(steps), world_size=len(ranks), tokens_per_step=tokens_per_step,
        emulated=first.emulated, dilation=last.dilation, dilation_start=first.dilation,
        wall_tokens_per_s=wall, tokens_per_s=chip, ideal_tokens_per_s=ideal,
        estimate_tokens_per_s=estimate_tokens_per_s,
        losses=tuple(float(losses[s]) for s in steps),  # type: ignore[arg-type]
        num_overruns=sum(r.overruns for r in records),
        num_phases=len(steps) * sum(num_phases_per_step),
        lost_fraction=max(sum(r.lost_s for r in records if r.rank == rank)
                          / sum(r.seconds for r in records if r.rank == rank)
                          for rank in ranks),
        stages=tuple(stages))
