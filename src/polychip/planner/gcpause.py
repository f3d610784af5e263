"""The cyclic garbage collector paused while the planner searches.

The search allocates millions of small, long-lived objects (shapes, cached rows, candidate
tuples) and no reference cycles: reference counting frees all of it (tests/planner/
test_gcpause.py checks that a search leaves no cyclic garbage). Python's collector still
walks the growing heap on every full collection and finds nothing: 18 % of mix-4096's
planning time and 20 % of mix-65536's (CPU, one core; benchmarks/RESULTS.md). The
simulator's replays (`--simulate`), which do make cycles, run with it on (`gc_resumed`).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def gc_paused(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` with the cyclic collector off while it runs (left as it was found: a caller
    that turned it off keeps it off)."""

    @functools.wraps(fn)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused


def gc_resumed(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` with the cyclic collector on while it runs (inside a paused search: work that
    makes cycles), then as it was."""

    @functools.wraps(fn)
    def resumed(*args: P.args, **kwargs: P.kwargs) -> R:
        if gc.isenabled():
            return fn(*args, **kwargs)
        gc.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.disable()

    return resumed
