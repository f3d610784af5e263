"""Errors the runtime raises: a user's mistake, or a distributed run that broke."""

from __future__ import annotations

from polychip.spec.errors import PolychipError


class RuntimeSetupError(PolychipError):
    """A runtime input is wrong. The message names the value, the rule it broke and the fix."""


class DistributedRunError(RuntimeError):
    """A collective failed mid-run: another rank died, or stopped answering for longer than the
    process-group timeout. The message names this rank, its step and the likely cause."""


class RankDied(DistributedRunError):
    """A rank's process died without a Python error (killed, out of memory, a crash in native
    code): ``rank`` (the plan's) and its ``exitcode``."""

    def __init__(self, message: str, rank: int, exitcode: int) -> None:
        super().__init__(message)
        self.rank, self.exitcode = rank, exitcode
