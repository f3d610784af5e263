"""What a run measured: one record per step per rank (JSON lines), and the run's summary.

Times are wall seconds on this machine. With emulated chips every compute phase lasts
``dilation x`` the cost model's time, so *chip-time* figures (what the emulated cluster would
do) are wall figures times the dilation; the summary gives both and says they were emulated.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METRICS_VERSION = 1


@dataclass(frozen=True)
class StepRecord:
    """One rank's step. ``loss`` is its replica's mean loss, ``global_loss`` the whole batch's.
    ``compute_s`` is the wall time of its compute phases (padded when emulated),
    ``real_compute_s`` the time the real computation took, ``wait_s`` the gradient sync
    (communication plus waiting for slower replicas)."""

    step: int
    rank: int
    replica: int
    stage: int
    chip: str
    island: str
    loss: float
    global_loss: float
    samples: int
    tokens: int
    seconds: float
    compute_s: float
    real_compute_s: float
    wait_s: float
    peak_memory_bytes: int
    memory_kind: str  # "device" (allocator peak) or "host-rss" (process peak, CPU runs)
    emulated: bool
    dilation: float | None
    overruns: int  # compute phases of this step whose real work exceeded the emulated slot
    version: int = METRICS_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def write_metrics(path: str | Path, records: Iterable[StepRecord]) -> None:
    """Write records as JSON lines, ordered by (step, rank)."""
    ordered = sorted(records, key=lambda r: (r.step, r.rank))
    Path(path).write_text("".join(r.to_json() + "\n" for r in ordered))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class ReplicaSummary:
    replica: int
    chip: str
    batch_share: int
    compute_s: float  # median per step, wall
    wait_s: float  # median per step, wall


@dataclass(frozen=True)
class RunSummary:
    """The run in a few figures (rank 0 builds it from every rank's records)."""

    steps: int
    world_size: int
    tokens_per_step: int
    emulated: bool
    dilation: float | None
    wall_tokens_per_s: float  # measured on this machine, steady state (step 0 left out)
    tokens_per_s: float  # chip time: wall x dilation when emulated, else wall
    ideal_tokens_per_s: float  # chip time: sum of each replica's own compute throughput
    estimate_tokens_per_s: float | None  # the plan's cost-model estimate
    losses: tuple[float, ...]  # global loss per step
    num_overruns: int
    num_phases: int
    replicas: tuple[ReplicaSummary, ...] = field(default_factory=tuple)

    @property
    def loss_first(self) -> float:
        return self.losses[0]

    @property
    def loss_last(self) -> float:
        return self.losses[-1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loss_first"], out["loss_last"] = self.loss_first, self.loss_last
        return out


def summarise(records: Sequence[StepRecord], *, num_phases_per_step: Sequence[int],
              estimate_tokens_per_s: float | None) -> RunSummary:
    """``num_phases_per_step``: compute phases each rank runs per step (micro-batches + 1)."""
    steps = sorted({r.step for r in records})
    ranks = sorted({r.rank for r in records})
    first = next(r for r in records if r.rank == ranks[0])
    rank0 = {r.step: r for r in records if r.rank == ranks[0]}
    tokens_per_step = sum(r.tokens for r in records if r.step == steps[0] and r.stage == 0)
    steady = steps[1:] if len(steps) > 1 else steps
    wall = tokens_per_step * len(steady) / sum(rank0[s].seconds for s in steady)
    scale = first.dilation if first.emulated and first.dilation else 1.0
    replicas, ideal = [], 0.0
    for rank in ranks:
        mine = [r for r in records if r.rank == rank and r.step in steady]
        compute = statistics.median(r.compute_s for r in mine)
        replicas.append(ReplicaSummary(mine[0].replica, mine[0].chip, mine[0].samples,
                                       compute, statistics.median(r.wait_s for r in mine)))
        ideal += mine[0].tokens / compute if compute > 0 else 0.0
    return RunSummary(
        steps=len(steps), world_size=len(ranks), tokens_per_step=tokens_per_step,
        emulated=first.emulated, dilation=first.dilation, wall_tokens_per_s=wall,
        tokens_per_s=wall * scale, ideal_tokens_per_s=ideal * scale,
        estimate_tokens_per_s=estimate_tokens_per_s,
        losses=tuple(rank0[s].global_loss for s in steps),
        num_overruns=sum(r.overruns for r in records),
        num_phases=len(steps) * sum(num_phases_per_step),
        replicas=tuple(replicas))
