"""How local ranks are started: forked only from a single-threaded parent (a forked child
inherits the locks other threads held -- ranks forked beside a supervisor's watcher thread
hung after a re-plan), else from a forkserver; either way every rank sees polychip's
variables as the launcher had them at the launch call, not when the forkserver started."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest

from polychip.runtime import launch
from polychip.runtime.launch import _start_method, launch_local

from .plans import cpu_test_cluster, dp_plan

KEY = "POLYCHIP_TEST_LAUNCH_ENV"


@dataclass(frozen=True)
class ReadEnv:
    emulate: bool = False
    timeout: timedelta = timedelta(seconds=60)

    def __call__(self, plan: object, rank: int) -> tuple[str | None, int]:
        return os.environ.get(KEY), os.getppid()


@contextmanager
def another_thread() -> Iterator[None]:
    done = threading.Event()
    thread = threading.Thread(target=done.wait, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_fork_only_from_a_single_threaded_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as alone:
        alone.setattr(launch.threading, "active_count", lambda: 1)
        assert _start_method(all_cpu=True) == "fork"
    assert _start_method(all_cpu=False) == "spawn"
    with another_thread():
        assert _start_method(all_cpu=True) == "forkserver"
        assert _start_method(all_cpu=False) == "spawn"


@pytest.mark.dist
def test_ranks_see_the_launchers_variables_at_each_launch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = dp_plan(cpu_test_cluster(), [(0, 0, "cpu-slow", 2, 2), (0, 1, "cpu-slow", 2, 2)])
    with another_thread():
        monkeypatch.setenv(KEY, "first")
        first = launch_local(plan, ReadEnv())
        monkeypatch.setenv(KEY, "second")  # the forkserver started with "first"
        second = launch_local(plan, ReadEnv())
        monkeypatch.delenv(KEY)
        gone = launch_local(plan, ReadEnv())
    assert [v for v, _ in first] == ["first", "first"]
    assert [v for v, _ in second] == ["second", "second"]
    assert [v for v, _ in gone] == [None, None]
    # not forked by this process's agent: by the forkserver, the same one both times
    parents = {p for _, p in first + second}
    assert len(parents) == 1 and os.getpid() not in parents
