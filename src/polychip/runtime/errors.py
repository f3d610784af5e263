"""Errors the runtime raises for a user's mistake (bad sizes, bad files, bad shares)."""

from __future__ import annotations


class RuntimeSetupError(ValueError):
    """A runtime input is wrong. The message names the value, the rule it broke and the fix.

    It will later subclass the project-wide ``PolychipError``; until then it is a plain
    ``ValueError`` so that callers can already catch it as one.
    """
