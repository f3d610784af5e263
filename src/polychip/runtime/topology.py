"""A plan -> each rank's role, its device, and its process groups.

Ranks are the plan's ranks (`Plan.ranks()`: replica by replica, stage by stage, TP rank), not
torchrun's: the launcher maps (node, local rank) to a plan rank and passes it explicitly.

Groups: ranks whose chips share a vendor and collective library form an *island*; each island
gets a group with its native backend (NCCL, HCCL, ... -- gloo when the chips are emulated or
are CPUs) and the island leaders (lowest rank of each island) form a gloo *bridge* group.
The world (default) group is gloo whenever more than one island exists, since vendor libraries
do not talk to each other. Every stage of TP degree > 1 gets a TP group; every gradient
segment of the schedule (layers held by the same stages in every replica) is all-reduced among
exactly the ranks holding it, one group per *piece* (:func:`segment_pieces`), hierarchically
when a piece spans islands. Groups with the same members are made once (:class:`GroupMaker`).

The role computations are pure (no torch); torch is imported where groups and devices are
made, so the launcher can print commands without paying for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from polychip.plan.capabilities import Capabilities
from polychip.plan.plan import Plan, RankInfo
from polychip.plan.segments import chunk_layers
from polychip.runtime.devices import device_unavailable, set_current_device
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.executable import check_executable

if TYPE_CHECKING:
    import torch

    from polychip.runtime.groups import Groups



@dataclass(frozen=True)
class RankRole:
    """What one rank does: its place in the plan (``info``: `Plan.ranks`, the one numbering
    of ranks), its work and where it runs."""

    info: RankInfo
    world_size: int
    island: str  # vendor/collective library of the chip
    device_type: str  # where tensors live: the chip's device type, or cpu when emulated
    backend: str  # collective backend inside the island (gloo when emulated)
    emulated: bool
    layer_start: int  # the plan's stage range (interleaved: its layer count only)
    layer_end: int
    chunks: tuple[tuple[int, int], ...]  # the layers it holds: one chunk per virtual stage
    num_stages: int
    stage_ranks: tuple[int, ...]  # the stage's TP group, leader first
    recompute: bool
    batch_share: int  # samples of the global batch this replica trains on each step
    sample_start: int  # global index of the replica's first sample
    micro_batch_size: int
    num_micro_batches: int
    global_batch: int

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def replica(self) -> int:
        return self.info.replica

    @property
    def stage(self) -> int:
        return self.info.stage

    @property
    def tp_rank(self) -> int:
        return self.info.tp_rank

    @property
    def node(self) -> int:
        return self.info.node

    @property
    def local_device(self) -> int:
        return self.info.local_device

    @property
    def chip(self) -> str:
        return self.info.chip

    @property
    def tp_size(self) -> int:
        return len(self.stage_ranks)

    @property
    def is_leader(self) -> bool:
        """Sends and receives for the stage (its lowest rank)."""
        return self.tp_rank == 0

    @property
    def first_stage(self) -> bool:
        return self.stage == 0

    @property
    def last_stage(self) -> bool:
        return self.stage == self.num_stages - 1

    @property
    def samples(self) -> range:
        return range(self.sample_start, self.sample_start + self.batch_share)

    def micro_batch(self, index: int) -> range:
        """Global sample indices of micro-batch ``index`` of this replica's share."""
        start = self.sample_start + index * self.micro_batch_size
        return range(start, start + self.micro_batch_size)


def rank_roles(plan: Plan, *, emulate: bool, caps: Capabilities | None = None
               ) -> tuple[RankRole, ...]:
    """Every rank's role, in plan rank order, once the plan is known executable
    (:func:`check_executable` with ``caps``)."""
    check_executable(plan, caps)
    return roles_of(plan, emulate=emulate)


def roles_of(plan: Plan, *, emulate: bool) -> tuple[RankRole, ...]:
    """Every rank's role, unchecked (for reports on a plan that may not run)."""
    shares = [rep.batch_size for rep in plan.replicas]
    stage_ranks = plan.stage_rank_map()
    chunks = [chunk_layers(rep, virtual_stages(plan)) for rep in plan.replicas]
    out = []
    for info in plan.ranks():
        rep = plan.replicas[info.replica]
        st = rep.stages[info.stage]
        chip = plan.chip(info.chip)
        out.append(RankRole(
            info=info, world_size=plan.world_size, island=chip.island,
            device_type="cpu" if emulate else chip.device_type,
            backend="gloo" if emulate or chip.device_type == "cpu" else chip.torch_backend,
            emulated=emulate, layer_start=st.layer_start, layer_end=st.layer_end,
            chunks=chunks[info.replica][info.stage],
            num_stages=rep.num_stages, stage_ranks=stage_ranks[(info.replica, info.stage)],
            recompute=st.recompute, batch_share=rep.batch_size,
            sample_start=sum(shares[:info.replica]),
            micro_batch_size=rep.micro_batch_size, num_micro_batches=rep.num_micro_batches,
            global_batch=plan.job.global_batch))
    return tuple(out)


def virtual_stages(plan: Plan) -> int:
    """Model chunks per stage: the plan's virtual stages under interleaved 1F1B, else 1."""
    return plan.virtual_stages if plan.schedule == "interleaved-1f1b" else 1


def islands(roles: tuple[RankRole, ...]) -> tuple[tuple[int, ...], ...]:
    """Ranks grouped by island, islands in order of their lowest rank."""
    by_island: dict[str, list[int]] = {}
    for role in roles:
        by_island.setdefault(role.island, []).append(role.rank)
    return tuple(tuple(ranks) for ranks in by_island.values())


def world_backend(roles: tuple[RankRole, ...]) -> str:
    """The default group's backend: the island's own when there is one island on devices,
    else gloo (plus the native backend for device tensors when it is a single island)."""
    if len({r.island for r in roles}) > 1 or all(r.backend == "gloo" for r in roles):
        return "gloo"
    first = roles[0]
    return f"cpu:gloo,{first.device_type}:{first.backend}"


def device_problems(roles: tuple[RankRole, ...]) -> list[str]:
    """Why this machine cannot run ``roles`` on their device types: one line per chip and
    reason, naming its ranks."""
    ranks: dict[tuple[str, str, str], list[int]] = {}
    for role in roles:
        why = device_unavailable(role.device_type, role.local_device)
        if why is not None:
            ranks.setdefault((role.chip, role.device_type, why), []).append(role.rank)
    return [f"rank{'s' if len(rs) > 1 else ''} {_rank_list(rs)} play{'' if len(rs) > 1 else 's'}"
            f" chip {chip!r} on device type {kind!r}, but this machine cannot: {why}; run with "
            f"--emulate to emulate the plan's chips on the CPU (gloo), or run on a machine "
            f"with {kind} devices" for (chip, kind, why), rs in ranks.items()]


def _rank_list(ranks: list[int]) -> str:
    return (f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 2 and ranks == list(
        range(ranks[0], ranks[-1] + 1)) else ", ".join(map(str, ranks)))


def check_devices(roles: tuple[RankRole, ...]) -> None:
    """Raise RuntimeSetupError naming every device type of ``roles`` this machine lacks."""
    problems = device_problems(roles)
    if problems:
        raise RuntimeSetupError("; ".join(problems))


def select_device(role: RankRole) -> torch.device:
    import torch

    check_devices((role,))
    if role.device_type == "cpu":
        return torch.device("cpu")
    device = torch.device(role.device_type, role.local_device)
    set_current_device(device)
    return device


@dataclass(frozen=True)
class Topology:
    """This rank's role, device and process groups (:mod:`polychip.runtime.groups`)."""

    role: RankRole
    roles: tuple[RankRole, ...]
    device: torch.device
    islands: tuple[tuple[int, ...], ...]
    groups: Groups


def build_topology(plan: Plan, rank: int, *, emulate: bool,
                   timeout: timedelta = timedelta(seconds=120)) -> Topology:
    """Collective: every rank of the plan calls it (after init_process_group)."""
    import torch.distributed as dist

    from polychip.runtime.groups import build_groups

    roles = rank_roles(plan, emulate=emulate)
    if dist.get_world_size() != len(roles) or dist.get_rank() != rank:
        raise RuntimeSetupError(
            f"process group has world size {dist.get_world_size()} and rank "
            f"{dist.get_rank()}, the plan needs {len(roles)} ranks and this is plan rank "
            f"{rank}: launch one process per plan device (polychip launch)")
    role = roles[rank]
    device = select_device(role)
    groups = build_groups(plan, roles, rank, device, timeout=timeout)
    return Topology(role, roles, device, islands(roles), groups)
