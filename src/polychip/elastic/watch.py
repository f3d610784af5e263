"""Chips that join: watch a cluster file while a plan runs; when it changes to a valid
cluster of more chips than the running plan's, ask the ranks to stop after their current
step (they save: :mod:`polychip.runtime.stopping`) so that the supervisor can plan again on
the larger cluster."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from polychip.spec.cluster import Cluster, load_cluster
from polychip.spec.errors import PolychipError


class ClusterWatch:
    """Polls ``path`` every ``poll_s`` seconds (nothing to do when ``path`` is None)."""

    def __init__(self, path: str | Path | None, stop_file: Path, poll_s: float,
                 say: Callable[[str], None]) -> None:
        self.path = None if path is None else Path(path)
        self.stop_file, self.poll_s, self.say = stop_file, poll_s, say
        self._seen = self._mtime()  # changes before the supervisor started are the plan's
        self.grown: Cluster | None = None

    def _mtime(self) -> int | None:
        try:
            return None if self.path is None else self.path.stat().st_mtime_ns
        except OSError:
            return None

    @contextmanager
    def during(self, running: Cluster) -> Iterator[ClusterWatch]:
        """Watch while the plan on ``running`` runs; :attr:`grown` says what was found."""
        self.grown = None
        done = threading.Event()
        thread = threading.Thread(target=self._poll, args=(running, done), daemon=True,
                                  name="polychip-cluster-watch")
        if self.path is not None:
            thread.start()
        try:
            yield self
        finally:
            done.set()
            if thread.is_alive():
                thread.join()

    def _poll(self, running: Cluster, done: threading.Event) -> None:
        while not done.wait(self.poll_s):
            if self.check(running):
                return

    def check(self, running: Cluster) -> bool:
        """Look once; True when the file grew (the ranks have been asked to stop)."""
        mtime = self._mtime()
        if mtime is None or mtime == self._seen:
            return False
        self._seen = mtime
        try:
            cluster = load_cluster(self.path)  # type: ignore[arg-type]
        except PolychipError as exc:
            self.say(f"elastic: {self.path} changed but is not a valid cluster; ignored "
                     f"({str(exc).splitlines()[0]})")
            return False
        have, now = running.num_devices, cluster.num_devices
        if now <= have:
            self.say(f"elastic: {self.path} changed to {now} chips, the plan runs on {have}; "
                     f"only more chips start a re-plan (dead ones are found by themselves)")
            return False
        self.grown = cluster
        self.say(f"elastic: {self.path} now has {now} chips (the plan runs on {have}); "
                 f"stopping after the current step to save and re-plan")
        self.stop_file.write_text("replan")
        return True
