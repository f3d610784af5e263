"""Stopping safely: SIGINT or SIGTERM asks a run to stop at the next step boundary.

Ctrl-C reaches every local rank (one process group of the terminal) and torchrun's agent,
which forwards SIGTERM to the ranks and gives them 30 s before killing them; a cluster's
scheduler sends SIGTERM. The signal only sets a flag; after each step the ranks agree
(:meth:`StopRequest.agreed`: one all-reduce of the flag, MAX, so all of them stop after the
same step, however the signals were spread in time), save a checkpoint when a directory is
set, and return normally.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def agreed(self) -> bool:
        """Collective (every rank, after the same step): whether any rank was asked to stop."""
        flag = torch.tensor([0 if self.signum is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT / SIGTERM set the request's flag instead of interrupting (main thread only;
    the previous handlers come back after)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request.handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
