"""Does a plan's run fit this host? `polychip train` asks before it starts a process (a
70B plan's 48 ranks on a laptop would otherwise die of out-of-memory a minute later).

- **Devices.** Ranks on an accelerator (not emulated) need a device each: the ranks on each
  device type must not outnumber this host's devices of that type (a plan of several nodes
  runs each node on its own host: `polychip launch`). A CPU rank that is not emulated is a
  CPU chip of the plan, run with one thread (``torch.set_num_threads(1)``): it needs a core
  of its own, or it measures the other ranks' contention instead of the chip. Emulated ranks
  share the cores: the emulation's dilation makes room for them (docs/runtime.md).
- **Memory.** Every rank runs in its own process on this host. A rank whose tensors live in
  host memory (emulated, or a CPU chip) holds its stage as the runtime builds it (parameters
  counted on the meta device, so the TP slices and the head are exact), in the run's dtypes
  (`precision.precision_of`): weights, the gradient buffer, optimizer state (AdamW: 2 values
  per parameter; SGD: 1; plus the master copy under mixed precision), and the
  activations the cost model gives its stage at the schedule's peak (converted from the job's
  compute bytes to the run's dtype); plus the process itself. A rank on an accelerator keeps
  its tensors there (the plan's estimate checks them against the chip) and needs its process
  on the host; so does the launching process. The sum must fit this host's available
  memory (``MemAvailable``).

The host's figures are injectable (:class:`Host`), so the check is tested with a fake host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from polychip.costmodel.estimate import CostModel
from polychip.plan.plan import Plan
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.precision import precision_of
from polychip.runtime.topology import RankRole, virtual_stages

if TYPE_CHECKING:
    from polychip.runtime.train import TrainConfig

GIB = 2**30
FORKED_RANK_BYTES = 100 * 2**20
"""Host memory of a CPU rank's process beyond its tensors. Measured on this repository's
2-core test host (torch 2.13 CPU, `polychip demo`, ranks forked from the parent): 96-103 MB
proportional set size per rank (/proc/PID/smaps_rollup ``Pss``), its tiny model's tensors
(< 15 MB) included."""
SPAWNED_RANK_BYTES = 300 * 2**20
"""... of a rank started fresh (spawned, as ranks on accelerators are): a process that
imports torch itself. Measured there: 297-317 MB resident (``Rss``) per process that has
imported torch and joined a gloo group."""
OPTIMIZER_VALUES = {"adamw": 2, "sgd": 1}  # state values per parameter (AdamW m, v; momentum)


@dataclass(frozen=True)
class Host:
    """What this host offers the ranks of a plan."""

    cores: int
    memory_available_bytes: int
    devices: dict[str, int]  # accelerator device type -> how many this host has


def this_host(device_types: Iterable[str] = ()) -> Host:
    """This machine: the cores this process may use, MemAvailable from /proc/meminfo (or the
    free physical pages), and the devices of each type asked for (0 when absent)."""
    from polychip.runtime.devices import device_unavailable

    devices = {}
    for kind in set(device_types) - {"cpu"}:
        if device_unavailable(kind, 0) is not None:
            devices[kind] = 0
        else:
            import torch

            devices[kind] = int(getattr(torch, kind).device_count())
    return Host(len(os.sched_getaffinity(0)), _memory_available_bytes(), devices)


def _memory_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def stage_params(plan: Plan, role: RankRole) -> int:
    """Parameters of ``role``'s stage (its TP slice) as the runtime builds it: counted on
    the meta device, nothing allocated."""
    import torch

    from polychip.runtime.model import StageModule
    from polychip.runtime.tensor_parallel import TensorParallel

    with torch.device("meta"):
        tp = TensorParallel(role.tp_size, role.tp_rank,
                            sequence_parallel=plan.job.sequence_parallel,
                            vocab_parallel=plan.job.vocab_parallel)
        stage = StageModule(plan.model, role.chunks[0][0], role.chunks[-1][1],
                            role.first_stage, role.last_stage, tp=tp,
                            recompute=role.recompute, chunks=role.chunks)
    return sum(p.numel() for p in stage.parameters())


def rank_host_bytes(plan: Plan, role: RankRole, config: TrainConfig,
                    params: int | None = None) -> int:
    """Host memory one rank needs (module docstring)."""
    if role.device_type != "cpu":
        return SPAWNED_RANK_BYTES
    p = precision_of(plan.job, config.dtype)
    weights, grads = p.compute.itemsize, p.grad.itemsize
    state = p.optimizer_dtype.itemsize * (OPTIMIZER_VALUES[config.optimizer]
                                          + (1 if p.master is not None else 0))
    n = stage_params(plan, role) if params is None else params
    cost = CostModel(plan.cluster, plan.model, plan.job)
    rep = plan.replicas[role.replica]
    activations = cost.memory_of(rep, role.stage, plan.schedule, 1,
                                 virtual_stages(plan)).activations
    activations = activations * weights // plan.job.compute_bytes
    return n * (weights + grads + state) + activations + FORKED_RANK_BYTES


def fit_problems(plan: Plan, roles: Sequence[RankRole], config: TrainConfig,
                 host: Host) -> list[str]:
    """Why ``roles`` (all on this host) cannot run here; empty when they fit."""
    out = []
    on: dict[str, int] = {}
    for r in roles:
        kind = "cpu-chip" if r.device_type == "cpu" and not r.emulated else r.device_type
        on[kind] = on.get(kind, 0) + 1
    for kind, count in sorted(on.items()):
        if kind == "cpu-chip" and count > host.cores:
            out.append(
                f"the plan runs {count} ranks as CPU chips (one thread each), this host has "
                f"{host.cores} cores: they would measure each other's contention, not the "
                f"plan; run with --emulate (the chips' speeds then come from the cost model), "
                f"or on a host with {count} cores")
        elif kind not in ("cpu", "cpu-chip") and count > host.devices.get(kind, 0):
            out.append(
                f"the plan puts {count} ranks on {kind} devices, this host has "
                f"{host.devices.get(kind, 0)}: run each node's ranks on its own host "
                f"(polychip launch), or --emulate")
    need, worst = _memory_need(plan, roles, config)
    if need > host.memory_available_bytes:
        out.append(
            f"the plan's {len(roles)} ranks need about {need / GIB:,.1f} GiB of this host's "
            f"memory (each rank's process, and on the CPU its stage's weights, gradients and "
            f"optimizer state in {config.dtype} and its activations; the largest rank "
            f"{worst / GIB:,.1f} GiB), this host has {host.memory_available_bytes / GIB:,.1f} "
            f"GiB available: train a plan of a smaller model here (README, 'A tour': "
            f"`polychip plan examples/clusters/cpu-test.yaml --model tiny ...`), or run each "
            f"node on its own host (polychip launch)")
    return out


def _memory_need(plan: Plan, roles: Sequence[RankRole], config: TrainConfig
                 ) -> tuple[int, int]:
    """(bytes all ranks and the launching process need, the largest rank's); ranks of the
    same shape are computed once."""
    cache: dict[tuple, int] = {}
    total, worst = SPAWNED_RANK_BYTES, 0  # the launcher: it has imported torch
    for r in roles:
        rep = plan.replicas[r.replica]
        key = (r.chunks, r.stage, r.num_stages, r.tp_size, r.tp_rank, r.recompute,
               r.device_type, rep.micro_batch_size, rep.num_micro_batches)
        if key not in cache:
            cache[key] = rank_host_bytes(plan, r, config)
        total += cache[key]
        worst = max(worst, cache[key])
    return total, worst


def check_host_fit(plan: Plan, roles: Sequence[RankRole], config: TrainConfig,
                   host: Host | None = None) -> None:
    """Refuse, before any process starts, a run that cannot fit ``host`` (default: this
    machine)."""
    host = host or this_host(r.device_type for r in roles)
    problems = fit_problems(plan, roles, config, host)
    if problems:
        raise RuntimeSetupError("this run does not fit this host: " + "; ".join(problems))
