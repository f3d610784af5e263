"""Measured figures for the cost model: a set of profiles (one per chip type), read between
their points (`interpolate`), and which of a plan's figures they supplied.

`CostModel` asks a `ComputeProfile` for each component -- a block's forward / backward (with
recompute) and the bytes it keeps, the embedding, the head + loss (and the bytes they keep),
the optimizer's seconds per parameter, the runtime's host work, a TP collective, the
intra-node point-to-point link, the memory in use outside the job's tensors, the chip's
corrections -- and uses its analytic figure wherever the answer is None. `ProfileSet` is the
implementation over profile files (`polychip.spec.profile`); a test may pass any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from polychip.costmodel.blocks import Shard, block_forward
from polychip.costmodel.compute import StageTimes
from polychip.costmodel.interpolate import along, at_point, at_tokens, hockney_fit
from polychip.costmodel.ops import Collective
from polychip.spec.accelerators import normalise
from polychip.spec.cluster import Cluster
from polychip.spec.errors import SpecError
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec
from polychip.spec.profile import Corrections, PassPoint, Profile

MEASURED, ANALYTIC, MIXED = "measured", "analytic", "mixed"
NO_CORRECTIONS = Corrections()


@dataclass(frozen=True)
class BlockFigures:
    """One transformer block, one micro-batch, one chip's TP share, collectives excluded."""

    fwd_s: float
    bwd_s: float
    recompute_bwd_s: float | None  # None: not measured (the cost model adds one forward)
    activation_bytes: float | None  # bytes kept for the backward; None: not measured


class ComputeProfile(Protocol):
    """Measured figures; every method returns None where it has no (interpolable) point."""

    def block(self, chip: str, tp: int, micro_batch: int, seq_len: int
              ) -> BlockFigures | None: ...

    def embedding(self, chip: str, tp: int, micro_batch: int, seq_len: int
                  ) -> StageTimes | None: ...

    def head(self, chip: str, tp: int, micro_batch: int, seq_len: int
             ) -> StageTimes | None: ...

    def end_bytes(self, chip: str, part: str, tp: int, micro_batch: int, seq_len: int
                  ) -> float | None:
        """Bytes the `embedding` or the `head` + loss keeps for its backward."""
        ...

    def optimizer_s(self, chip: str, num_params: float) -> float | None:
        """Seconds of one optimizer step over `num_params` parameters (a fixed part and a
        part per parameter)."""
        ...

    def host_s(self, chip: str, micro_batch: int, seq_len: int) -> tuple[float, float] | None:
        """(host seconds per micro-batch, per step) of the runtime outside its phases."""
        ...

    def fixed_memory_bytes(self, chip: str) -> int | None: ...

    def collective_s(self, chip: str, op: str, group_size: int, message_bytes: float
                     ) -> float | None: ...

    def p2p_link(self, chip: str) -> tuple[float, float] | None:
        """(bandwidth bytes/s, latency s) between two chips of one node."""
        ...

    def corrections(self, chip: str) -> Corrections: ...


class NoMeasurements:
    """A `ComputeProfile` that measured nothing: subclass it to supply a few figures."""

    def block(self, chip: str, tp: int, micro_batch: int, seq_len: int) -> BlockFigures | None:
        return None

    def embedding(self, chip: str, tp: int, micro_batch: int, seq_len: int) -> StageTimes | None:
        return None

    def head(self, chip: str, tp: int, micro_batch: int, seq_len: int) -> StageTimes | None:
        return None

    def end_bytes(self, chip: str, part: str, tp: int, micro_batch: int, seq_len: int
                  ) -> float | None:
        return None

    def optimizer_s(self, chip: str, num_params: float) -> float | None:
        return None

    def host_s(self, chip: str, micro_batch: int, seq_len: int) -> tuple[float, float] | None:
        return None

    def fixed_memory_bytes(self, chip: str) -> int | None:
        return None

    def collective_s(self, chip: str, op: str, group_size: int, message_bytes: float
                     ) -> float | None:
        return None

    def p2p_link(self, chip: str) -> tuple[float, float] | None:
        return None

    def corrections(self, chip: str) -> Corrections:
        return NO_CORRECTIONS


def _times(p: PassPoint) -> tuple[float | None, ...]:
    return (p.fwd_s, p.bwd_s)


def _bytes(p: PassPoint) -> tuple[float | None, ...]:
    return (None if p.activation_bytes is None else float(p.activation_bytes),)


def _block(p: PassPoint) -> tuple[float | None, ...]:
    act = None if p.activation_bytes is None else float(p.activation_bytes)
    return (p.fwd_s, p.bwd_s, p.recompute_bwd_s, act)


class ProfileSet:
    """Profiles keyed by chip type (`ComputeProfile` over profile files)."""

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self.profiles = {normalise(p.chip): p for p in profiles}
        self._links = {c: _fit_p2p(p) for c, p in self.profiles.items()}

    @staticmethod
    def for_job(profiles: Sequence[Profile], cluster: Cluster, model: ModelSpec,
                job: TrainingJob) -> ProfileSet:
        """The set, after checking that each profile was measured for this model shape,
        precision and attention kernel, on a chip type of the cluster."""
        chips = {normalise(c.name) for c in cluster.chips()}
        for p in profiles:
            p.check_applies_to(model, job)
            if normalise(p.chip) not in chips:
                raise SpecError(
                    f"{p.chip!r} is no chip type of cluster {cluster.name!r} (it has "
                    f"{', '.join(sorted(chips))}); leave this profile out or name its chip as "
                    f"the cluster does", file=p.file, key="chip")
        return ProfileSet(profiles)

    def _of(self, chip: str) -> Profile | None:
        return self.profiles.get(normalise(chip))

    def block(self, chip: str, tp: int, micro_batch: int, seq_len: int) -> BlockFigures | None:
        p = self._of(chip)
        hit = p and at_point(p.blocks, tp, micro_batch, seq_len, _block)
        if not hit:
            return None
        fwd, bwd, rec, act = hit
        assert fwd is not None and bwd is not None  # required in every block point
        return BlockFigures(fwd, bwd, rec, act)

    def _pass(self, points: Sequence[PassPoint], tp: int, micro_batch: int, seq_len: int
              ) -> StageTimes | None:
        hit = at_point(points, tp, micro_batch, seq_len, _times)
        return None if hit is None else StageTimes(*hit)  # type: ignore[arg-type]

    def embedding(self, chip: str, tp: int, micro_batch: int, seq_len: int) -> StageTimes | None:
        p = self._of(chip)
        return p and self._pass(p.embedding, tp, micro_batch, seq_len)

    def head(self, chip: str, tp: int, micro_batch: int, seq_len: int) -> StageTimes | None:
        p = self._of(chip)
        return p and self._pass(p.head, tp, micro_batch, seq_len)

    def end_bytes(self, chip: str, part: str, tp: int, micro_batch: int, seq_len: int
                  ) -> float | None:
        p = self._of(chip)
        if p is None:
            return None
        points = p.embedding if part == "embedding" else p.head
        hit = at_point(points, tp, micro_batch, seq_len, _bytes)
        return None if hit is None else hit[0]

    def optimizer_s(self, chip: str, num_params: float) -> float | None:
        p = self._of(chip)
        if p is None or p.optimizer_s_per_param is None:
            return None
        return (p.optimizer_fixed_s or 0.0) + p.optimizer_s_per_param * num_params

    def host_s(self, chip: str, micro_batch: int, seq_len: int) -> tuple[float, float] | None:
        p = self._of(chip)
        if p is None or p.host_step_s is None:
            return None
        hit = at_tokens(p.host, micro_batch * seq_len, seq_len, lambda h: (h.seconds,))
        return None if hit is None or hit[0] is None else (hit[0], p.host_step_s)

    def fixed_memory_bytes(self, chip: str) -> int | None:
        p = self._of(chip)
        return p and p.fixed_memory_bytes

    def collective_s(self, chip: str, op: str, group_size: int, message_bytes: float
                     ) -> float | None:
        p = self._of(chip)
        if p is None:
            return None
        points = [(float(c.message_bytes), (c.seconds,)) for c in p.collectives
                  if c.op == op and c.group_size == group_size]
        hit = along(points, message_bytes)
        return None if hit is None else hit[0]

    def p2p_link(self, chip: str) -> tuple[float, float] | None:
        return self._links.get(normalise(chip))

    def corrections(self, chip: str) -> Corrections:
        p = self._of(chip)
        return p.corrections if p else NO_CORRECTIONS


def _fit_p2p(p: Profile) -> tuple[float, float] | None:
    return hockney_fit([(float(t.message_bytes), t.seconds) for t in p.p2p])


def tp_collectives(model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int
                   ) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
    """One block's TP collectives ((kind, bytes) of the forward, of the backward) as the
    analytic block runs them (`blocks.block_forward`: the one home of which collective a TP
    block makes): Megatron's two all-reduces of the b·s·h activations, or with sequence
    parallelism a reduce-scatter and an all-gather in their place (plus the backward's
    re-gather of each saved sequence shard)."""
    ops = [op for op in block_forward(Shard(model, job, micro_batch, tp))
           if isinstance(op, Collective)]
    fwd = tuple((op.forward, op.n_bytes) for op in ops if op.forward is not None)
    bwd = tuple((op.backward, op.n_bytes) for op in ops if op.backward is not None)
    return fwd, bwd


def label(labels: Sequence[str]) -> str:
    """measured, analytic, or mixed (some uses measured, some analytic)."""
    kinds = set(labels)
    return kinds.pop() if len(kinds) == 1 else MIXED
