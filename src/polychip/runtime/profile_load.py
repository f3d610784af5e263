"""Busy neighbours: a CPU "chip" is a core of a host whose other cores run the job's other
ranks, and it computes slower beside them than alone (shared caches and memory bandwidth,
a shared power budget). `polychip profile --busy-neighbours N` keeps N other cores running
the same block, forward and backward, while it times, as the other ranks of a run on this
host do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.multiprocessing as mp

from polychip.runtime.errors import RuntimeSetupError
from polychip.spec.model import ModelSpec

READY_TIMEOUT_S = 120.0


def _busy(model: ModelSpec, dtype: torch.dtype, micro_batch: int, seq_len: int,
          ready: object, stop: object) -> None:
    from polychip.runtime.layers import rotary_cos_sin
    from polychip.runtime.model import build_stage

    torch.set_num_threads(1)
    stage = build_stage(model, 0, 1, dtype=dtype, has_embedding=False, has_head=False)
    layer = next(iter(stage.layers.values()))
    x = torch.randn(micro_batch, seq_len, model.hidden_size, dtype=dtype, requires_grad=True)
    cos, sin = rotary_cos_sin(seq_len, model.head_dim, x)
    ready.set()  # type: ignore[attr-defined]
    while not stop.is_set():  # type: ignore[attr-defined]
        layer(x, cos, sin).sum().backward()


@contextmanager
def busy_neighbours(count: int, model: ModelSpec, dtype: torch.dtype, micro_batch: int,
                    seq_len: int) -> Iterator[None]:
    """While the body runs, `count` other processes (one thread each) run one block of
    `model` forward and backward at (`micro_batch`, `seq_len`) without pause."""
    if count <= 0:
        yield
        return
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    started = []
    try:
        for _ in range(count):
            ready = ctx.Event()
            proc = ctx.Process(target=_busy, args=(model, dtype, micro_batch, seq_len, ready,
                                                   stop), daemon=True)
            proc.start()
            started.append((proc, ready))
        for proc, ready in started:
            if not ready.wait(READY_TIMEOUT_S):
                raise RuntimeSetupError(
                    f"--busy-neighbours: a neighbour process did not start within "
                    f"{READY_TIMEOUT_S:.0f} s (exit code {proc.exitcode}); profile without it")
        yield
    finally:
        stop.set()
        for proc, _ in started:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
