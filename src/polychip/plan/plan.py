"""The plan: which devices form each stage of each pipeline replica, and what each does.

A plan is self-contained: it embeds the resolved cluster, the model shape and the job, so
the simulator and the runtime need nothing else. Ranks are numbered replica by replica,
stage by stage, then by tensor-parallel rank (`Plan.ranks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from polychip.spec.cluster import Cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

SCHEMA_VERSION = 1
ScheduleKind = Literal["1f1b", "gpipe", "interleaved-1f1b", "zb-h1"]


@dataclass(frozen=True)
class Stage:
    """Blocks [layer_start, layer_end) on `tp` chips of one node (tensor parallel inside).

    The first stage of a replica also holds the embedding; the last, the final norm, the
    output head and the loss.
    """

    layer_start: int
    layer_end: int
    node: int  # global node index: cluster node groups in file order, nodes within
    local_devices: tuple[int, ...]  # chip slots on that node, one per TP rank
    chip: str
    recompute: bool = False  # full activation recompute of this stage's blocks

    @property
    def tp(self) -> int:
        return len(self.local_devices)

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start


@dataclass(frozen=True)
class Replica:
    """One pipeline; trains on `batch_size` sequences of the global batch per step."""

    stages: tuple[Stage, ...]
    batch_size: int
    micro_batch_size: int

    @property
    def num_micro_batches(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_devices(self) -> int:
        return sum(s.tp for s in self.stages)

    def shape_key(self) -> tuple:
        """Replicas with equal keys behave identically (same chips, layers, batch)."""
        return (
            tuple([(s.chip, s.layer_start, s.layer_end, len(s.local_devices), s.recompute)
                   for s in self.stages]),  # (a list: a cost model's hot path)
            self.batch_size,
            self.micro_batch_size,
        )


@dataclass(frozen=True)
class Estimate:
    """What a plan is expected to achieve. `source` says how it was obtained."""

    step_time_s: float
    tokens_per_s: float
    mfu: float  # model FLOPs / (step time x the cluster's summed dense peak)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)  # per chip type, worst device
    memory_capacity_bytes: dict[str, int] = field(default_factory=dict)
    breakdown_s: dict[str, float] = field(default_factory=dict)  # pipeline, dp_sync, optimizer
    bubble_fraction: float = 0.0
    source: Literal["analytic", "simulated"] = "analytic"
    # compute_s, pipeline_wait_s, grad_sync_s, optimizer_s, idle_s: they sum to the step
    phases_s: dict[str, float] = field(default_factory=dict)
    # figure -> measured | analytic | mixed (costmodel/profiled.py FIGURES); {} in old plans
    sources: dict[str, str] = field(default_factory=dict)
    # US$ and kWh per million tokens over the chips the plan uses (costmodel/economics.py);
    # None: a used chip's rent or board power is unknown (or an older plan)
    cost_per_mtok: float | None = None
    energy_kwh_per_mtok: float | None = None

    @staticmethod
    def of_step(
        *,
        step_time_s: float,
        tokens_per_s: float,
        mfu: float,
        pipeline_s: float,
        dp_sync_s: float,
        optimizer_s: float,
        bubble_fraction: float,
        memory_rows: Iterable[tuple[str, int, int]],
        source: Literal["analytic", "simulated"],
        compute_s: float = 0.0,
        sources: dict[str, str] | None = None,
        idle_s: float = 0.0,
        step_idle_s: float = 0.0,
    ) -> Estimate:
        """An estimate from a step's parts; `memory_rows`: (chip, peak bytes, capacity bytes)
        of every device kind, reduced to the worst device per chip type; `compute_s`: the
        forward + backward seconds of the busiest device over the step (`phases_s` splits
        the step as that device spends it: its compute, its wait inside the pipeline, then
        the exposed gradient sync, the optimizer, and its host work outside those, `idle_s`,
        of which `step_idle_s` is per step, after the pipeline, the rest inside it)."""
        peak: dict[str, int] = {}
        cap: dict[str, int] = {}
        for chip, used, capacity in memory_rows:
            peak[chip] = max(peak.get(chip, 0), used)
            cap[chip] = capacity
        return Estimate(
            step_time_s=step_time_s,
            tokens_per_s=tokens_per_s,
            mfu=mfu,
            peak_memory_bytes=peak,
            memory_capacity_bytes=cap,
            breakdown_s={"pipeline": pipeline_s, "dp_sync": dp_sync_s, "optimizer": optimizer_s},
            bubble_fraction=bubble_fraction,
            source=source,
            phases_s={
                "compute_s": compute_s,
                "pipeline_wait_s": max(0.0, pipeline_s - compute_s - (idle_s - step_idle_s)),
                "grad_sync_s": dp_sync_s,
                "optimizer_s": optimizer_s,
                "idle_s": idle_s,
            },
            sources=dict(sources or {}),
        )


@dataclass(frozen=True)
class Baseline:
    """A reference point on the same cost model (best single type, naive mixed, ideal)."""

    name: str
    description: str
    tokens_per_s: float
    step_time_s: float | None = None
    mfu: float | None = None
    feasible: bool = True
    per_chip_tokens_per_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RankInfo:
    """One rank of the plan: the one numbering every layer uses (the schedule, the simulator,
    the runtime's roles and launcher)."""

    rank: int
    replica: int
    stage: int
    tp_rank: int
    node: int
    local_device: int
    chip: str


@dataclass(frozen=True)
class Plan:
    cluster: Cluster
    model: ModelSpec
    job: TrainingJob
    replicas: tuple[Replica, ...]
    schedule: ScheduleKind = "1f1b"
    virtual_stages: int = 1  # > 1 only with interleaved-1f1b
    zero1: bool = False  # optimizer state sharded across each layer's data-parallel group
    estimate: Estimate | None = None
    baselines: dict[str, Baseline] = field(default_factory=dict)
    ideal: Baseline | None = None
    notes: tuple[str, ...] = ()
    # the compute ceiling: every chip at its achievable FLOP/s on model FLOPs alone
    limit: Baseline | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def world_size(self) -> int:
        return sum(r.num_devices for r in self.replicas)

    def ranks(self) -> tuple[RankInfo, ...]:
        out: list[RankInfo] = []
        for ri, rep in enumerate(self.replicas):
            for si, st in enumerate(rep.stages):
                for ti, dev in enumerate(st.local_devices):
                    out.append(RankInfo(len(out), ri, si, ti, st.node, dev, st.chip))
        return tuple(out)

    def stage_rank_map(self) -> dict[tuple[int, int], tuple[int, ...]]:
        """(replica, stage) -> its ranks (its TP group, leader first)."""
        return replica_stage_ranks(self.replicas)

    def stage_ranks(self, replica: int, stage: int) -> tuple[int, ...]:
        return self.stage_rank_map()[(replica, stage)]

    def chip(self, name: str):
        for c in self.cluster.chips():
            if c.name == name:
                return c
        raise KeyError(name)


def replica_stage_ranks(replicas: Sequence[Replica]) -> dict[tuple[int, int], tuple[int, ...]]:
    """(replica, stage) -> its ranks (the TP group, leader first), numbered as `Plan.ranks`:
    replica by replica, stage by stage, TP rank."""
    out, rank = {}, 0
    for ri, rep in enumerate(replicas):
        for si, st in enumerate(rep.stages):
            out[(ri, si)] = tuple(range(rank, rank + st.tp))
            rank += st.tp
    return out
