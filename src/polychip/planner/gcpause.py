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


def _collector(on: bool) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator that runs its function with the collector ``on`` (or off), then leaves
    it as it was found."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if gc.isenabled() == on:
                return fn(*args, **kwargs)
            gc.enable() if on else gc.disable()
            try:
                return fn(*args, **kwargs)
            finally:
                gc.disable() if on else gc.enable()

        return run

    return decorate


gc_paused = _collector(False)  # a search: off while it runs (a caller's "off" stays off)
gc_resumed = _collector(True)  # inside a paused search, work that makes cycles: on
