"""Every process group a plan needs, made in one place and in one order on every rank.

- TP: one group per stage of TP degree > 1 (the island's backend: TP stays inside a node);
- gradient pieces: for every segment of the schedule, each of its pieces
  (:func:`polychip.plan.segments.segment_pieces`) is combined among exactly the ranks that
  hold it, by the steps of the one description of the collective
  (:mod:`polychip.plan.collectives`): inside an island over a group with the island's native
  backend, across islands over gloo *bridge* groups of the ranks owning the same chunk, one
  per chunk (so every rank bridges its own shard, in parallel). Under ZeRO-1 each piece also
  gets the reduce-scatter and all-gather halves;
- pipeline routes: same-island neighbours on a native backend talk through a dedicated
  pipeline group of the island; everything else through the world group (gloo, the bridge),
  staged through host memory for device tensors.

Groups with the same members, backend and purpose are made once (:class:`GroupMaker`), so
a data-parallel plan reuses one set of groups for all of its segments. The gradient groups
are used only by the gradient sync (:mod:`polychip.runtime.buckets`), which may run them on
its own thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from polychip.plan.collectives import ISLAND, Collective, Kind, describe
from polychip.plan.plan import Plan
from polychip.plan.segments import Piece, segment_pieces
from polychip.runtime.grads import Call, RankCollective
from polychip.runtime.p2p import Route
from polychip.runtime.tensor_parallel import NO_TP, TensorParallel
from polychip.runtime.topology import RankRole, islands

GLOO = "gloo"


class GroupMaker:
    """``get`` makes a group the first time its (members, backend, purpose) is asked for.
    Collective: every rank must ask for the same groups in the same order."""

    def __init__(self, rank: int, timeout: timedelta | None) -> None:
        self.rank, self.timeout = rank, timeout
        self._made: dict[tuple, dist.ProcessGroup | None] = {}

    def get(self, ranks: Sequence[int], backend: str, purpose: str = ""
            ) -> dist.ProcessGroup | None:
        key = (tuple(sorted(ranks)), backend, purpose)
        if key not in self._made:
            group = dist.new_group(list(key[0]), backend=backend, timeout=self.timeout)
            self._made[key] = group if self.rank in key[0] else None
        return self._made[key]

    @property
    def num_groups(self) -> int:
        return len(self._made)


@dataclass(frozen=True)
class PieceSync:
    """One piece of a segment this rank holds, and its collectives as this rank runs them:
    the all-reduce, and (ZeRO-1) the reduce-scatter and all-gather halves."""

    piece: Piece
    collectives: dict[Kind, RankCollective]

    @property
    def allreduce(self) -> RankCollective:
        return self.collectives["all-reduce"]


@dataclass(frozen=True)
class Groups:
    tp: TensorParallel
    pieces: dict[str, tuple[PieceSync, ...]]  # segment -> this rank's pieces of it
    routes: dict[int, Route]  # pipeline neighbour -> how to reach it
    num_groups: int


def piece_islands(piece: Piece, roles: Sequence[RankRole]) -> tuple[tuple[int, ...], ...]:
    by_island: dict[str, list[int]] = {}
    for r in piece.ranks:
        by_island.setdefault(roles[r].island, []).append(r)
    return tuple(tuple(sorted(m)) for m in by_island.values())


def rank_collective(maker: GroupMaker, coll: Collective, roles: Sequence[RankRole]
                    ) -> RankCollective:
    """Collective: makes (or reuses) a group for every group of every step of ``coll``;
    the calls of this rank."""
    steps = []
    for step in coll.steps:
        calls = []
        for g in step.groups:
            backend = roles[g.ranks[0]].backend if step.link == ISLAND else GLOO
            group = maker.get(g.ranks, backend, "grad")
            if group is not None:
                calls.append(Call(step.op, g, group, staged=step.link != ISLAND))
        if calls:
            steps.append(tuple(calls))
    return RankCollective(coll, maker.rank, tuple(steps))


def build_groups(plan: Plan, roles: tuple[RankRole, ...], rank: int, device: torch.device, *,
                 timeout: timedelta | None) -> Groups:
    """Collective: every rank of the plan calls it, after init_process_group."""
    maker = GroupMaker(rank, timeout)
    ranks_by_island = islands(roles)
    backends = [roles[members[0]].backend for members in ranks_by_island]
    role = roles[rank]
    tp = NO_TP
    for stage_ranks in plan.stage_rank_map().values():
        if len(stage_ranks) > 1:
            group = maker.get(stage_ranks, roles[stage_ranks[0]].backend, "tp")
            if rank in stage_ranks:
                tp = TensorParallel(len(stage_ranks), stage_ranks.index(rank), group)

    kinds: tuple[Kind, ...] = ("all-reduce", "reduce-scatter", "all-gather") if plan.zero1 \
        else ("all-reduce",)
    pieces: dict[str, tuple[PieceSync, ...]] = {}
    for name, all_pieces in segment_pieces(plan).items():
        held = []
        for piece in all_pieces:
            isl = piece_islands(piece, roles)
            colls = {kind: rank_collective(maker, describe(kind, isl), roles) for kind in kinds}
            if rank in piece.ranks:
                held.append(PieceSync(piece, colls))
        if held:
            pieces[name] = tuple(held)

    pipeline_groups = {}
    for members, backend in zip(ranks_by_island, backends, strict=True):
        if backend != GLOO and len(members) > 1:
            pipeline_groups[members] = maker.get(members, backend, "pipeline")
    routes: dict[int, Route] = {}
    if role.is_leader:
        neighbours = [r.rank for r in roles if r.replica == role.replica and r.is_leader
                      and abs(r.stage - role.stage) == 1]
        for peer in neighbours:
            island = next(m for m in ranks_by_island if rank in m)
            if peer in island and island in pipeline_groups:
                routes[peer] = Route(pipeline_groups[island], staged=False)
            else:
                routes[peer] = Route(None, staged=device.type != "cpu")
    return Groups(tp, pieces, routes, maker.num_groups)
