"""Every process group a plan needs, made in one place and in one order on every rank.

- islands: one group per island with its native backend, a gloo bridge of the island leaders
  (:func:`polychip.runtime.grads.new_island_groups`);
- TP: one group per stage of TP degree > 1 (the island's backend: TP stays inside a node);
- gradient pieces: for every segment of the schedule, one all-reduce per piece
  (:func:`polychip.runtime.topology.segment_pieces`) among exactly the ranks that hold it --
  flat inside one island, hierarchical across islands (reduce in each island, all-reduce over
  a bridge of the islands' leaders, broadcast back);
- pipeline routes: same-island neighbours on a native backend talk through a dedicated
  pipeline group of the island; everything else through the world group (gloo, the bridge),
  staged through host memory for device tensors.

Groups with the same members, backend and purpose are made once (:class:`GroupMaker`), so
a data-parallel plan reuses the island groups for all of its segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from polychip.plan.plan import Plan
from polychip.runtime.grads import IslandGroups, hierarchical_allreduce_, new_island_groups
from polychip.runtime.p2p import Route
from polychip.runtime.tensor_parallel import NO_TP, TensorParallel
from polychip.runtime.topology import Piece, RankRole, islands, segment_pieces

GLOO = "gloo"


class GroupMaker:
    """``get`` makes a group the first time its (members, backend, purpose) is asked for.
    Collective: every rank must ask for the same groups in the same order."""

    def __init__(self, rank: int, timeout: timedelta | None) -> None:
        self.rank, self.timeout = rank, timeout
        self._made: dict[tuple, dist.ProcessGroup | None] = {}

    def remember(self, ranks: Sequence[int], backend: str, group: dist.ProcessGroup | None
                 ) -> None:
        self._made[(tuple(sorted(ranks)), backend, "")] = group if self.rank in ranks else None

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
class PieceReduce:
    """One piece of a segment this rank holds, and the SUM all-reduce among its ranks."""

    piece: Piece
    allreduce: Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Groups:
    islands: IslandGroups
    tp: TensorParallel
    pieces: dict[str, tuple[PieceReduce, ...]]  # segment -> this rank's pieces of it
    routes: dict[int, Route]  # pipeline neighbour -> how to reach it
    num_groups: int


def _piece_allreduce(maker: GroupMaker, piece: Piece, roles: tuple[RankRole, ...]
                     ) -> Callable[[torch.Tensor], None] | None:
    by_island: dict[str, list[int]] = {}
    for r in piece.ranks:
        by_island.setdefault(roles[r].island, []).append(r)
    members = list(by_island.values())
    if len(members) == 1:
        group = maker.get(members[0], roles[members[0][0]].backend)
        if group is None:
            return None

        def flat(tensor: torch.Tensor) -> None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return flat
    island_groups = [maker.get(m, roles[m[0]].backend) if len(m) > 1 else None
                     for m in members]
    bridge = maker.get([min(m) for m in members], GLOO)
    rank = maker.rank
    for m, group in zip(members, island_groups, strict=True):
        if rank in m:
            leads = rank == min(m)

            def hierarchical(tensor: torch.Tensor, group=group, leads=leads) -> None:
                hierarchical_allreduce_(tensor, group, bridge if leads else None, leads)
            return hierarchical
    return None


def build_groups(plan: Plan, roles: tuple[RankRole, ...], rank: int, device: torch.device, *,
                 timeout: timedelta | None) -> Groups:
    """Collective: every rank of the plan calls it, after init_process_group."""
    maker = GroupMaker(rank, timeout)
    ranks_by_island = islands(roles)
    backends = [roles[members[0]].backend for members in ranks_by_island]
    mine = new_island_groups(ranks_by_island, island_backend=backends, timeout=timeout)
    for members, backend in zip(ranks_by_island, backends, strict=True):
        maker.remember(members, backend, mine.island_group if rank in members else None)
    maker.remember([min(m) for m in ranks_by_island], GLOO, mine.bridge_group)

    role = roles[rank]
    tp = NO_TP
    for stage_ranks in plan.stage_rank_map().values():
        if len(stage_ranks) > 1:
            group = maker.get(stage_ranks, roles[stage_ranks[0]].backend, "tp")
            if rank in stage_ranks:
                tp = TensorParallel(len(stage_ranks), stage_ranks.index(rank), group)

    pieces: dict[str, tuple[PieceReduce, ...]] = {}
    for name, all_pieces in segment_pieces(plan).items():
        held = []
        for piece in all_pieces:
            allreduce = _piece_allreduce(maker, piece, roles)
            if allreduce is not None:
                held.append(PieceReduce(piece, allreduce))
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
    return Groups(mine, tp, pieces, routes, maker.num_groups)
