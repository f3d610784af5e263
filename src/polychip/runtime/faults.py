"""Fault injection for tests and benchmarks (never set in production): a rank that dies, a
chip that turns slow. Torch-free, so that the elastic supervisor reads and clears the same
variables the ranks act on (:mod:`polychip.runtime.session` applies them)."""

from __future__ import annotations

import os

from polychip.runtime.errors import RuntimeSetupError

FAULT_ENV = "POLYCHIP_KILL_RANK_AT"
"""Fault injection for tests and benchmarks (benchmarks/elastic.py): ``RANK:STEP`` makes plan
rank RANK kill its own process (SIGKILL, as the kernel's out-of-memory killer would) right
after step STEP."""


def injected_death(rank: int) -> int | None:
    """The step after which this rank is to die (``FAULT_ENV``), or None."""
    value = os.environ.get(FAULT_ENV, "")
    if not value:
        return None
    try:
        who, step = (int(x) for x in value.split(":"))
    except ValueError:
        raise RuntimeSetupError(f"{FAULT_ENV}={value!r}: write RANK:STEP, e.g. 1:5") from None
    return step if who == rank else None


SLOW_ENV = "POLYCHIP_SLOW_RANK"
"""Fault injection for tests and benchmarks (a chip slower than planned,
:mod:`polychip.elastic.slowdown`): ``RANK:FACTOR:STEP`` makes plan rank RANK's compute phases
(forward, backward) last FACTOR times as long from step STEP on -- emulated chips: their
slots; otherwise it sleeps (FACTOR - 1) x each phase's measured time."""


def injected_slowdown(rank: int) -> tuple[float, int] | None:
    """(factor, first step) of this rank's injected slowdown (``SLOW_ENV``), or None."""
    value = os.environ.get(SLOW_ENV, "")
    if not value:
        return None
    try:
        who, factor, step = value.split(":")
        parsed = int(who), float(factor), int(step)
    except ValueError:
        raise RuntimeSetupError(f"{SLOW_ENV}={value!r}: write RANK:FACTOR:STEP, e.g. "
                                f"2:3:2 (rank 2, 3x slower from step 2)") from None
    if not 1.0 <= parsed[1] < float("inf") or parsed[2] < 0:
        raise RuntimeSetupError(f"{SLOW_ENV}={value!r}: FACTOR must be >= 1 and STEP >= 0")
    return (parsed[1], parsed[2]) if parsed[0] == rank else None
