"""`polychip profile`'s links: collectives among 2..N devices of this node (all-reduce,
all-gather, reduce-scatter by message size), point to point between two of them, and copies
device <-> host. The collectives run in N processes (`torch.multiprocessing.spawn`, one per
device, joined through a file store), with the device's own collective backend (gloo on the
CPU); every figure is the median of `repeats` runs after `warmup`, each run started
together (a barrier) and timed to its end on the slowest rank."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polychip.runtime import distcalls
from polychip.runtime.profile_timing import Timing, synchronize, time_call
from polychip.spec.profile import CollectivePoint, TransferPoint

# The collective library each device type's torch build uses (a catalog chip names its own).
DEFAULT_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl", "mlu": "cncl", "xpu": "xccl",
                    "hpu": "hccl"}
OPS = ("all_reduce", "all_gather", "reduce_scatter")
TIMEOUT = timedelta(seconds=120)
ELEMENT_BYTES = 4  # float32 messages


@dataclass(frozen=True)
class LinkJob:
    device_type: str
    backend: str
    num_ranks: int
    sizes: tuple[int, ...]  # message bytes
    timing: Timing
    store: str
    out: str


def group_sizes(num_ranks: int) -> list[int]:
    """2, 4, 8, ... up to the node's devices, and the node's count itself."""
    sizes, g = [], 2
    while g < num_ranks:
        sizes.append(g)
        g *= 2
    return [*sizes, num_ranks] if num_ranks >= 2 else []


def measure_links(device_type: str, backend: str, num_ranks: int, sizes: tuple[int, ...],
                  timing: Timing, workdir: Path
                  ) -> tuple[tuple[CollectivePoint, ...], tuple[TransferPoint, ...]]:
    """Collectives and point-to-point among `num_ranks` processes, one per device."""
    job = LinkJob(device_type, backend, num_ranks, sizes, timing,
                  str(workdir / f"store-{os.getpid()}"), str(workdir / "links.json"))
    mp.spawn(_rank_main, args=(job,), nprocs=num_ranks, join=True)
    data = json.loads(Path(job.out).read_text())
    return (tuple(CollectivePoint(**c) for c in data["collectives"]),
            tuple(TransferPoint(**t) for t in data["p2p"]))


def _rank_main(rank: int, job: LinkJob) -> None:
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if job.device_type != "cpu":
        device = torch.device(job.device_type, rank)
        getattr(torch, job.device_type).set_device(device)
    dist.init_process_group(job.backend, init_method=f"file://{job.store}", rank=rank,
                            world_size=job.num_ranks, timeout=TIMEOUT)
    try:
        collectives = []
        for g in group_sizes(job.num_ranks):
            group = dist.new_group(list(range(g)))
            for op in OPS:
                for size in job.sizes:
                    if rank < g:
                        t = _time_collective(op, size, g, group, device, job.timing)
                        collectives.append(CollectivePoint(op, g, _rounded(size, g), t))
            dist.barrier()
        p2p = [TransferPoint(_rounded(n, 1), _time_p2p(rank, n, device, job.timing))
               for n in job.sizes] if rank < 2 else []
        if rank == 0:
            Path(job.out).write_text(json.dumps({"collectives": [asdict(c) for c in collectives],
                                                 "p2p": [asdict(t) for t in p2p]}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _rounded(n_bytes: int, g: int) -> int:
    """Bytes of a float32 message of about `n_bytes` that splits evenly over `g` ranks."""
    per = max(1, n_bytes // ELEMENT_BYTES // g)
    return per * g * ELEMENT_BYTES


def _time_collective(op: str, size: int, g: int, group, device: torch.device,
                     timing: Timing) -> float:
    numel = _rounded(size, g) // ELEMENT_BYTES
    full = torch.ones(numel, device=device)
    part = torch.ones(numel // g, device=device)
    all_gather, reduce_scatter = distcalls.all_gather_single, distcalls.reduce_scatter_single

    samples = []
    for i in range(timing.warmup + timing.repeats):
        dist.barrier(group=group)  # every run starts together
        synchronize(device)
        start = time.perf_counter()
        if op == "all_reduce":
            dist.all_reduce(full, group=group)
        elif op == "all_gather":
            all_gather(full, part, group=group)
        else:
            reduce_scatter(part, full, group=group)
        synchronize(device)
        if i >= timing.warmup:
            samples.append(time.perf_counter() - start)
    slowest = torch.tensor([statistics.median(samples)], device=device, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
    return float(slowest.item())


def _time_p2p(rank: int, size: int, device: torch.device, timing: Timing) -> float:
    """One-way seconds between ranks 0 and 1: half a ping-pong."""
    buf = torch.ones(_rounded(size, 1) // ELEMENT_BYTES, device=device)

    def ping_pong() -> None:
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        else:
            dist.recv(buf, 0)
            dist.send(buf, 0)

    return time_call(ping_pong, device, timing) / 2


def measure_host_copies(device: torch.device, sizes: tuple[int, ...], timing: Timing
                        ) -> tuple[tuple[TransferPoint, ...], tuple[TransferPoint, ...]]:
    """(device -> host, host -> device) copies by size, into pinned host memory where the
    device has it (on the CPU: a copy between two host buffers)."""
    d2h, h2d = [], []
    for size in sizes:
        numel = _rounded(size, 1) // ELEMENT_BYTES
        on_device = torch.ones(numel, device=device)
        host = torch.empty(numel, pin_memory=device.type != "cpu")
        d2h.append(TransferPoint(numel * ELEMENT_BYTES,
                                 time_call(lambda h=host, d=on_device: h.copy_(d), device, timing)))
        h2d.append(TransferPoint(numel * ELEMENT_BYTES,
                                 time_call(lambda h=host, d=on_device: d.copy_(h), device, timing)))
    return tuple(d2h), tuple(h2d)
