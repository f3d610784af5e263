"""Where `CostModel` takes a measured figure instead of its analytic one, and which figures of
a plan were measured (docs/cost-model.md, "Measured profiles").

One function per component; each returns None where the profile has no point, and the cost
model then uses its analytic figure. A measured block was timed with its TP collectives
replaced by no-ops (`polychip profile`), so its collectives are added here: measured where
the profile has the collective at that group size and message size, analytic otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from polychip.costmodel import compute
from polychip.costmodel.comm import LinkKind
from polychip.costmodel.compute import StageTimes, split_like
from polychip.costmodel.measured import (
    ANALYTIC,
    MEASURED,
    NO_CORRECTIONS,
    label,
    tp_collectives,
)
from polychip.costmodel.tpcomm import tp_collective_s
from polychip.plan.plan import Replica
from polychip.plan.segments import segments_of
from polychip.spec.accelerators import Accelerator
from polychip.spec.profile import Corrections

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel

# Figures of a plan, in the order the estimate lists their sources.
FIGURES = ("block", "tp_collectives", "embedding", "head", "activation_memory", "optimizer",
           "host", "p2p", "grad_sync", "memory_reserve")


def _collectives_s(cm: CostModel, chip: Accelerator, tp: int,
                   ops: tuple[tuple[str, float], ...]) -> tuple[float, bool]:
    """Seconds of `ops` ((kind, bytes) TP collectives), measured where the profile has the
    collective at that group and message size, else analytic (`tpcomm`); all measured?"""
    total, measured = 0.0, True
    for kind, n in ops:
        t = cm.profile.collective_s(chip.name, kind.replace("-", "_"), tp, n) \
            if cm.profile else None
        if t is None:
            measured = False
            t = tp_collective_s(chip, kind, n, tp)
        total += t
    return total, measured


def tp_comm_s(cm: CostModel, chip: Accelerator, tp: int, micro_batch: int
              ) -> tuple[float, float, bool]:
    """(seconds of one block's TP collectives forward, backward, all of them measured)."""
    if tp <= 1:
        return 0.0, 0.0, True
    fwd_ops, bwd_ops = tp_collectives(cm.model, cm.job, micro_batch, tp)
    fwd, fwd_measured = _collectives_s(cm, chip, tp, fwd_ops)
    bwd, bwd_measured = _collectives_s(cm, chip, tp, bwd_ops)
    return fwd, bwd, fwd_measured and bwd_measured


def block_times(cm: CostModel, chip: Accelerator, tp: int, micro_batch: int,
                recompute: bool) -> StageTimes | None:
    """One block's measured forward and backward (with recompute: the measured recompute
    backward, else forward + backward) plus its TP collectives; its weight-gradient part in
    the analytic block's share of the backward (`compute.split_like`)."""
    m = cm.profile.block(chip.name, tp, micro_batch, cm.job.seq_len) if cm.profile else None
    if m is None:
        return None
    comm_f, comm_b, _ = tp_comm_s(cm, chip, tp, micro_batch)
    analytic = compute.block_times(chip, cm.model, cm.job, micro_batch, tp)
    if not recompute:
        return split_like(StageTimes(m.fwd_s + comm_f, m.bwd_s + comm_b), analytic)
    bwd = m.recompute_bwd_s if m.recompute_bwd_s is not None else m.fwd_s + m.bwd_s
    # the re-forward's collectives too; the re-forward itself: one measured forward
    measured = StageTimes(m.fwd_s + comm_f, bwd + comm_f + comm_b, redo_s=m.fwd_s + comm_f)
    redone = StageTimes(analytic.fwd_s, analytic.bwd_s + analytic.fwd_s, analytic.wgrad_s)
    return split_like(measured, redone)


def part_times(cm: CostModel, part: str, chip: Accelerator, tp: int, micro_batch: int
               ) -> StageTimes | None:
    """The measured embedding (`part` "embedding") or final norm + head + loss ("head"),
    its weight-gradient part in the analytic share of the backward."""
    if cm.profile is None:
        return None
    read = cm.profile.embedding if part == "embedding" else cm.profile.head
    measured = read(chip.name, tp, micro_batch, cm.job.seq_len)
    if measured is None:
        return None
    analytic = compute.embedding_times if part == "embedding" else compute.head_times
    return split_like(measured, analytic(chip, cm.model, cm.job, micro_batch, tp))


def activation_bytes(cm: CostModel, chip: str, tp: int, micro_batch: int) -> float | None:
    """Bytes one block keeps for its backward per micro-batch, measured."""
    m = cm.profile.block(chip, tp, micro_batch, cm.job.seq_len) if cm.profile else None
    return None if m is None else m.activation_bytes


def end_bytes(cm: CostModel, chip: str, part: str, tp: int, micro_batch: int) -> float | None:
    """Bytes the `embedding` or the `head` + loss keeps per micro-batch, measured."""
    if cm.profile is None:
        return None
    return cm.profile.end_bytes(chip, part, tp, micro_batch, cm.job.seq_len)


def optimizer_s(cm: CostModel, chip: str, num_params: float) -> float | None:
    """A measured optimizer step over `num_params` of the chip's parameters."""
    return cm.profile.optimizer_s(chip, num_params) if cm.profile else None


def host_s(cm: CostModel, chip: str, micro_batch: int) -> tuple[float, float] | None:
    """The runtime's measured host work (seconds per micro-batch, per step)."""
    return cm.profile.host_s(chip, micro_batch, cm.job.seq_len) if cm.profile else None


def fixed_memory_bytes(cm: CostModel, chip: str) -> int | None:
    """Memory in use outside the job's tensors, measured (the reserve's fixed part)."""
    return cm.profile.fixed_memory_bytes(chip) if cm.profile else None


def intra_node_link(cm: CostModel, chip: str) -> tuple[float, float] | None:
    """Measured (bandwidth, latency) between two chips of one node."""
    return cm.profile.p2p_link(chip) if cm.profile else None


def link(cm: CostModel, node_a: int, node_b: int, analytic: tuple[LinkKind, float, float]
         ) -> tuple[LinkKind, float, float]:
    """The link between two nodes: inside a node, the profile's measured point-to-point
    link where it has one; the p2p corrections of the chips at either end (the larger)
    divide the bandwidth and multiply the latency."""
    kind, bw, lat = analytic
    chips = [cm.nodes[n].group.chip.name for n in (node_a, node_b)]
    if node_a == node_b:
        bw, lat = intra_node_link(cm, chips[0]) or (bw, lat)
    slower = max(corrections(cm, c).p2p for c in chips)
    return kind, bw / slower, lat * slower


def corrections(cm: CostModel, chip: str) -> Corrections:
    return cm.profile.corrections(chip) if cm.profile else NO_CORRECTIONS


def figure_sources(cm: CostModel, replicas: tuple[Replica, ...]) -> dict[str, str]:
    """For each figure the plan uses: measured, analytic, or mixed (measured for some
    stages, analytic for others). Figures the plan does not use are left out."""
    uses: dict[str, list[str]] = defaultdict(list)
    seq = cm.job.seq_len

    def mark(figure: str, measured: bool) -> None:
        uses[figure].append(MEASURED if measured else ANALYTIC)

    prof = cm.profile
    for r in replicas:
        mb = r.micro_batch_size
        for si, st in enumerate(r.stages):
            chip = cm.chip(st.chip)
            block = prof.block(st.chip, st.tp, mb, seq) if prof else None
            if st.num_layers:
                mark("block", block is not None)
                if st.tp > 1:
                    mark("tp_collectives", block is not None and tp_comm_s(cm, chip, st.tp, mb)[2])
                mark("activation_memory", block is not None and not st.recompute
                     and block.activation_bytes is not None)
            if si == 0:
                mark("embedding", part_times(cm, "embedding", chip, st.tp, mb) is not None)
            if si == r.num_stages - 1:
                mark("head", part_times(cm, "head", chip, st.tp, mb) is not None)
            mark("optimizer", optimizer_s(cm, st.chip, 1.0) is not None)
            mark("host", host_s(cm, st.chip, mb) is not None)
            mark("memory_reserve", fixed_memory_bytes(cm, st.chip) is not None)
            if si + 1 < r.num_stages:
                nxt = r.stages[si + 1]
                same = st.node == nxt.node
                mark("p2p", same and intra_node_link(cm, st.chip) is not None)
    if len(replicas) > 1:
        mark("grad_sync", _sync_measured(cm, replicas))
    return {f: label(uses[f]) for f in FIGURES if uses.get(f)}


def _sync_measured(cm: CostModel, replicas: tuple[Replica, ...]) -> bool:
    """Whether the gradient sync is priced from measured collectives: every rank on one node
    of one chip type whose profile has the all-reduce (gradsync prices such a ring from it)."""
    places = {(st.node, st.chip) for r in replicas for st in r.stages}
    if cm.profile is None or len(places) != 1:
        return False
    (_, chip), = places
    sizes = [cm.job.reduce_bytes * seg.num_params(cm.model)
             for seg in segments_of(replicas, cm.model) if len(seg.holders) > 1]
    return all(cm.profile.collective_s(chip, "all_reduce", len(replicas), n) is not None
               for n in sizes)
