"""Stopping safely: Ctrl-C or SIGTERM to ``polychip train`` stops the run at the next step
boundary, after a checkpoint when a directory is set.

Two ways a stop reaches the ranks:

- The launcher process takes SIGINT and SIGTERM itself (:func:`stop_file_on_signals`; torchrun's
  agent is told to leave them alone) and writes the signal's number into a *stop file* whose
  path every rank has (``POLYCHIP_STOP_FILE``).
- Ctrl-C in a terminal also sends SIGINT to every rank (they share its process group); a
  rank records it (:func:`worker_signals`), from its start, so one pressed during set-up
  counts at the first step boundary too. SIGUSR1 does the same for a rank started elsewhere.

After each step the ranks agree (:meth:`StopRequest.agreed`: one all-reduce of a flag, MAX,
so all of them stop after the same step, however the signal reached them), save when a
checkpoint directory is set, and return their results normally. SIGTERM to a *rank* stays
what torchrun's agent means by it -- stop now, another rank died -- so a rank killed that way
dies at once instead of waiting for a peer that will never answer. A second Ctrl-C to the
launcher stops at once as well, without saving.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

STOP_FILE_ENV = "POLYCHIP_STOP_FILE"
RANK_STOP_SIGNALS = (signal.SIGINT, signal.SIGUSR1)
LAUNCHER_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []  # the stop signals this rank took, in order


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def worker_signals() -> None:
    """In a rank, first thing: SIGINT / SIGUSR1 ask for a stop at the next step boundary;
    SIGTERM terminates at once (as the launcher's agent means it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in RANK_STOP_SIGNALS:
        signal.signal(s, _record)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_signal() -> int | None:
    """Why this rank is to stop: the signal it took, or the one the launcher wrote into the
    stop file; None when nothing asked it to."""
    if _received:
        return _received[0]
    path = os.environ.get(STOP_FILE_ENV)
    if path and os.path.exists(path):
        text = Path(path).read_text().strip()
        return int(text) if text.isdigit() else int(signal.SIGTERM)
    return None


class StopRequest:
    def agreed(self) -> bool:
        """Collective (every rank, after the same step): whether any rank was asked to stop."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if stop_signal() is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


@contextmanager
def stop_file_on_signals(path: Path) -> Iterator[list[int]]:
    """In the launcher: SIGINT / SIGTERM write their number to ``path`` (the ranks stop at the
    next step boundary); a second one raises KeyboardInterrupt (stop at once). Yields the
    signals taken. Main thread only; the previous handlers come back after."""
    taken: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield taken
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        taken.append(signum)
        if len(taken) > 1:
            raise KeyboardInterrupt
        path.write_text(str(signum))

    previous = {s: signal.signal(s, handle) for s in LAUNCHER_STOP_SIGNALS}
    try:
        yield taken
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
