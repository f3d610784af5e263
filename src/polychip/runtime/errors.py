"""Errors the runtime raises for a user's mistake (bad sizes, bad files, bad shares)."""

from __future__ import annotations

from polychip.spec.errors import PolychipError


class RuntimeSetupError(PolychipError):
    """A runtime input is wrong. The message names the value, the rule it broke and the fix."""
