"""What one simulated step shows: step time, throughput, bubble, per-stage busy time and
memory, time on each kind of link, and the critical path in words."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from polychip.costmodel import CostModel, LinkKind
from polychip.plan.plan import Estimate, Plan
from polychip.simulator.state import Activity, Prog, Recording


@dataclass(frozen=True)
class StageResult:
    """One stage of a class of alike replicas (`replicas`): per device of the stage."""

    replicas: tuple[int, ...]
    stage: int
    chip: str
    tp: int
    ranks: tuple[int, ...]  # of the first replica listed
    compute_s: float  # forward + backward
    optimizer_s: float
    busy_fraction: float  # compute / step
    peak_in_flight: float  # micro-batches whose activations are held at the peak
    peak_memory_bytes: int
    memory_capacity_bytes: int
    pipeline_end_s: float  # end of its last backward


@dataclass(frozen=True)
class LinkResult:
    kind: LinkKind
    transfers: int  # every replica's, and every all-reduce hop
    n_bytes: float
    seconds: float  # summed over transfers (they overlap in time)


@dataclass(frozen=True)
class SimResult:
    step_time_s: float
    tokens_per_s: float
    mfu: float
    pipeline_s: float  # last backward of any stage
    dp_sync_s: float  # all-reduce time left after the pipeline (exposed)
    optimizer_s: float  # the rest of the step
    bubble_fraction: float
    overlap_grad_sync: bool
    stages: tuple[StageResult, ...]
    links: tuple[LinkResult, ...]
    critical_path: tuple[tuple[str, float], ...]  # (what, seconds), largest first
    plan: Plan = field(repr=False, compare=False)
    recording: Recording = field(repr=False, compare=False)
    # replayed program index -> [(time, bytes of one of its devices)], a step function
    memory_timeline: dict[int, list[tuple[float, int]]] = field(repr=False, compare=False)

    def stage_of_rank(self, rank: int) -> StageResult:
        ranks = self.plan.ranks()
        if not 0 <= rank < len(ranks):
            raise KeyError(f"rank {rank} is not in the plan (it has {len(ranks)})")
        r = ranks[rank]
        return next(st for st in self.stages if r.replica in st.replicas and st.stage == r.stage)

    def busy_fraction(self, rank: int) -> float:
        return self.stage_of_rank(rank).busy_fraction

    def critical_path_text(self, top: int = 4) -> str:
        parts = [f"{what}: {s / self.step_time_s:.0%}" for what, s in self.critical_path[:top]]
        return "; ".join(parts) + " of the step"

    def to_estimate(self) -> Estimate:
        return Estimate.of_step(
            step_time_s=self.step_time_s,
            tokens_per_s=self.tokens_per_s,
            mfu=self.mfu,
            pipeline_s=self.pipeline_s,
            dp_sync_s=self.dp_sync_s,
            optimizer_s=self.optimizer_s,
            bubble_fraction=self.bubble_fraction,
            compute_s=max(st.compute_s for st in self.stages),
            memory_rows=(
                (st.chip, st.peak_memory_bytes, st.memory_capacity_bytes) for st in self.stages
            ),
            source="simulated",
        )


def _label(a: Activity, progs: list[Prog], many: bool) -> str:
    if a.kind in ("compute", "optimizer"):
        p = progs[a.key]
        where = f"replica {p.replica} stage {p.stage}" if many else f"stage {p.stage}"
        chip = p.rep.stages[p.stage].chip
        return f"{where} on {chip}" + (" (optimizer)" if a.kind == "optimizer" else "")
    if a.kind == "transfer":
        return f"{a.key} transfers"
    return "gradient all-reduce"


def critical_path(final: Activity | None, progs: list[Prog], many: bool) -> list[tuple[str, float]]:
    spent: dict[str, float] = defaultdict(float)
    a = final
    while a is not None:
        spent[_label(a, progs, many)] += a.end - a.start
        if a.pred is not None and a.start > a.pred.end + 1e-12:
            spent["waiting"] += a.start - a.pred.end
        a = a.pred
    return sorted(spent.items(), key=lambda kv: -kv[1])


def build_result(plan: Plan, cm: CostModel, rec: Recording, overlap: bool) -> SimResult:
    progs = rec.programs
    step = max(p.done_t or 0.0 for p in progs)
    pipeline = max(p.pipeline_end or 0.0 for p in progs)
    synced = max([end for _, _, end in rec.collectives], default=pipeline)
    dp_sync = max(0.0, synced - pipeline)
    size = {c.rep: len(c.members) for c in rec.classes}
    members = {c.rep: c.members for c in rec.classes}
    zero = len(plan.replicas) if plan.zero1 else 1
    v = max(1, plan.virtual_stages if plan.schedule == "interleaved-1f1b" else 1)
    stages, memory, busy = [], {}, 0.0
    for p in progs:
        st = p.rep.stages[p.stage]
        empty = cm.stage_memory_at(p.rep, p.stage, 0, zero)
        per_micro = cm.stage_memory_at(p.rep, p.stage, 1, zero).activations - empty.activations
        held = dict(p.mem)  # at equal times the last count stands (a B frees, an F takes)
        memory[p.index] = [(t, int(empty.total + k * per_micro / v)) for t, k in held.items()]
        busy += p.compute_busy_s * st.tp * size[p.replica]
        stages.append(
            StageResult(
                replicas=members[p.replica],
                stage=p.stage,
                chip=st.chip,
                tp=st.tp,
                ranks=p.program.ranks,
                compute_s=p.compute_busy_s,
                optimizer_s=sum(e - s for s, e, what in p.spans if what == "OPT"),
                busy_fraction=p.compute_busy_s / step,
                peak_in_flight=p.peak_in_flight / v,
                peak_memory_bytes=max(b for _, b in memory[p.index]),
                memory_capacity_bytes=cm.chip(st.chip).memory_bytes,
                pipeline_end_s=p.pipeline_end or 0.0,
            )
        )
    links: dict[LinkKind, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for start, end, src, _, kind, n in rec.transfers:
        k = size[progs[src].replica]
        row = links[kind]
        row[0], row[1], row[2] = row[0] + k, row[1] + k * n, row[2] + k * (end - start)
    for start, end, *_, kind, n in rec.hops:
        row = links[kind]
        row[0], row[1], row[2] = row[0] + 1, row[1] + n, row[2] + (end - start)
    tokens_per_s = plan.job.tokens_per_step / step
    flops = plan.model.training_flops_per_token(plan.job.seq_len) * tokens_per_s
    final = max(progs, key=lambda p: p.done_t or 0.0).last
    return SimResult(
        step_time_s=step,
        tokens_per_s=tokens_per_s,
        mfu=flops / plan.cluster.peak_flops(plan.job.precision),
        pipeline_s=pipeline,
        dp_sync_s=dp_sync,
        optimizer_s=step - pipeline - dp_sync,
        bubble_fraction=max(0.0, 1.0 - busy / (plan.world_size * pipeline)) if pipeline else 0.0,
        overlap_grad_sync=overlap,
        stages=tuple(stages),
        links=tuple(
            LinkResult(k, int(r[0]), r[1], r[2])
            for k, r in sorted(links.items(), key=lambda kv: kv[0].value)
            if k is not LinkKind.LOCAL
        ),
        critical_path=tuple(critical_path(final, progs, len(rec.classes) > 1)),
        plan=plan,
        recording=rec,
        memory_timeline=memory,
    )
