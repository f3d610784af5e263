"""Gradient combination for uneven data parallelism, flat or across vendor islands.

Replica r holds b_r of the B samples of the global batch and computes g_r, the gradient of the
*mean* loss over its own samples. The gradient of the mean loss over all B samples is
Σ_r (b_r / B) · g_r, so each rank scales its gradients by b_r / B and the ranks SUM them: the
update is exactly that of one large batch, however unevenly the batch was split.

Islands: ranks of one chip vendor share a native collective backend; vendors' libraries do not
talk to each other. :func:`hierarchical_allreduce_` reduces inside each island, all-reduces
across islands among the island leaders over a bridge group (gloo, through host memory), and
broadcasts the result back inside each island.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from polychip.runtime.errors import RuntimeSetupError

AllReduce = Callable[[torch.Tensor], None]
"""An in-place SUM all-reduce of one tensor over the data-parallel ranks."""


def scale_for_share(batch_share: int, global_batch: int) -> float:
    """The weight b_r / B of a replica holding ``batch_share`` of ``global_batch`` samples."""
    if global_batch < 1:
        raise RuntimeSetupError(
            f"global_batch={global_batch}: the global batch must hold at least 1 sample")
    if not 0 <= batch_share <= global_batch:
        raise RuntimeSetupError(
            f"batch_share={batch_share} is outside 0..global_batch={global_batch}: a replica's "
            f"share is part of the global batch; check the plan's batch shares")
    return batch_share / global_batch


def weighted_allreduce_(params: Iterable[torch.nn.Parameter], batch_share: int,
                        global_batch: int, group: dist.ProcessGroup | None = None, *,
                        allreduce: AllReduce | None = None) -> None:
    """Make every rank's ``.grad`` equal to Σ_r (b_r / B) · g_r, in place.

    Gradients are flattened into one buffer per (device, dtype), so each bucket is a single
    collective, then copied back. A parameter without a gradient (a rank with no samples)
    contributes zeros. Every rank must pass the same parameters in the same order.
    ``allreduce`` replaces the flat SUM all-reduce over ``group`` (for example with
    :func:`hierarchical_allreduce_` bound to the rank's island groups).
    """
    scale = scale_for_share(batch_share, global_batch)
    if allreduce is None:
        def allreduce(t: torch.Tensor) -> None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    buckets: dict[tuple[str, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((str(p.device), p.dtype), []).append(p)
    for key in sorted(buckets, key=str):  # the same collective order on every rank
        grads = [p.grad for p in buckets[key]]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat.mul_(scale)
        allreduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def hierarchical_allreduce_(tensor: torch.Tensor, island_group: dist.ProcessGroup | None,
                            bridge_group: dist.ProcessGroup | None,
                            is_island_leader: bool) -> None:
    """SUM all-reduce of ``tensor`` over all islands, in place.

    The island leader is rank 0 of ``island_group`` (None: an island of this rank alone);
    only leaders belong to ``bridge_group`` (pass None elsewhere). The bridge is staged through
    host memory when the tensor is not on the CPU, since the bridge backend (gloo) talks to the
    host.
    """
    alone = island_group is None
    if is_island_leader != (alone or dist.get_rank(island_group) == 0) or (
            is_island_leader and bridge_group is None):
        raise RuntimeSetupError(
            f"rank {dist.get_rank()} has is_island_leader={is_island_leader}, island rank "
            f"{'-' if alone else dist.get_rank(island_group)}, bridge_group={bridge_group}: "
            f"the leader must be rank 0 of its island and a member of the bridge group; build "
            f"the groups with new_island_groups()")
    if not alone:
        dist.reduce(tensor, group_dst=0, op=dist.ReduceOp.SUM, group=island_group)
    if is_island_leader:
        staged = tensor if tensor.device.type == "cpu" else tensor.cpu()
        dist.all_reduce(staged, op=dist.ReduceOp.SUM, group=bridge_group)
        if staged is not tensor:
            tensor.copy_(staged)
    if not alone:
        dist.broadcast(tensor, group_src=0, group=island_group)


@dataclass(frozen=True)
class IslandGroups:
    """This rank's view of the islands: its island's group, and the bridge if it leads."""

    island_ranks: tuple[int, ...]
    island_group: dist.ProcessGroup
    bridge_group: dist.ProcessGroup | None
    is_island_leader: bool

    def allreduce(self, tensor: torch.Tensor) -> None:
        """:func:`hierarchical_allreduce_` over these groups (usable as ``allreduce=``)."""
        hierarchical_allreduce_(tensor, self.island_group, self.bridge_group,
                                self.is_island_leader)


def new_island_groups(islands: Sequence[Sequence[int]], *,
                      island_backend: str | Sequence[str | None] | None = None,
                      bridge_backend: str = "gloo",
                      timeout: timedelta | None = None) -> IslandGroups:
    """Create one group per island (its lowest rank leads) and a bridge group of the leaders.

    ``island_backend`` is one backend for every island, or one per island (each island's
    native collective library; None: the default group's backend). Collective: every rank of
    the world calls it with the same arguments; ``islands`` must partition the ranks
    0..world_size-1.
    """
    world_size = dist.get_world_size()
    members = sorted(r for island in islands for r in island)
    if members != list(range(world_size)) or any(len(island) == 0 for island in islands):
        raise RuntimeSetupError(
            f"islands={[list(i) for i in islands]} do not partition the ranks "
            f"0..{world_size - 1}: every rank must be in exactly one non-empty island")
    rank = dist.get_rank()
    mine: IslandGroups | None = None
    if island_backend is None or isinstance(island_backend, str):
        backends: list[str | None] = [island_backend] * len(islands)
    else:
        backends = list(island_backend)
    if len(backends) != len(islands):
        raise RuntimeSetupError(
            f"island_backend has {len(backends)} entries for {len(islands)} islands: give one "
            f"backend per island, or a single backend for all")
    groups = [dist.new_group(sorted(island), backend=backend, timeout=timeout)
              for island, backend in zip(islands, backends, strict=True)]
    leaders = [min(island) for island in islands]
    bridge = dist.new_group(leaders, backend=bridge_backend, timeout=timeout)
    for island, group in zip(islands, groups, strict=True):
        if rank in island:
            leads = rank == min(island)
            mine = IslandGroups(tuple(sorted(island)), group, bridge if leads else None, leads)
    assert mine is not None
    return mine
