"""Timing on any torch device for `polychip profile`: the device synchronised before every
clock read, `warmup` untimed runs, then the median of `repeats`; the bytes autograd saves for
a backward; the allocator's peak where the device keeps statistics."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    warmup: int
    repeats: int


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


def _allocator(device: torch.device):
    """The device's allocator statistics module, or None (the CPU has none)."""
    module = getattr(torch, device.type, None)
    has = device.type != "cpu" and hasattr(module, "max_memory_allocated")
    return module if has else None


def time_call(fn: Callable[[], object], device: torch.device, timing: Timing,
              before: Callable[[], object] | None = None) -> float:
    """Median seconds of `fn()`; `before()`, untimed, ahead of each call."""
    samples = []
    for i in range(timing.warmup + timing.repeats):
        if before is not None:
            before()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i >= timing.warmup:
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_passes(run_fwd: Callable[[], torch.Tensor], run_bwd: Callable[[torch.Tensor], None],
                device: torch.device, timing: Timing) -> tuple[float, float]:
    """Median seconds of a forward and of the backward that follows it."""
    fwd, bwd = [], []
    for i in range(timing.warmup + timing.repeats):
        synchronize(device)
        start = time.perf_counter()
        out = run_fwd()
        synchronize(device)
        mid = time.perf_counter()
        run_bwd(out)
        synchronize(device)
        if i >= timing.warmup:
            fwd.append(mid - start)
            bwd.append(time.perf_counter() - mid)
    return statistics.median(fwd), statistics.median(bwd)


def saved_bytes(run_fwd: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for the backward of one forward,
    parameters excluded."""
    exclude = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run_fwd()
    return sum(seen.values())


def peak_bytes(run_fwd: Callable[[], torch.Tensor], run_bwd: Callable[[torch.Tensor], None],
               device: torch.device) -> int | None:
    """The allocator's peak above its level before one forward + backward (None on CPU)."""
    alloc = _allocator(device)
    if alloc is None:
        return None
    synchronize(device)
    alloc.reset_peak_memory_stats(device)
    base = alloc.memory_allocated(device)
    run_bwd(run_fwd())
    synchronize(device)
    return int(alloc.max_memory_allocated(device) - base)


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """TF32 matrix units for tf32 jobs only (fp32 jobs keep full fp32 matmuls)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


CACHE_FLUSH_BYTES = 64 * 2**20
"""More than the last-level cache of the CPUs and GPUs we run on (a 2-core VM's share of a
Xeon's L3; an H100/H200's 50-60 MB L2): writing it leaves nothing of a step's state cached."""


def cache_flusher(device: torch.device) -> Callable[[], None]:
    """Evicts the caches, as a backward pass does before the optimizer step: writes a buffer
    larger than the last-level cache."""
    buffer = torch.empty(CACHE_FLUSH_BYTES // 4, dtype=torch.float32, device=device)

    def flush() -> None:
        buffer.fill_(1.0)

    return flush
