"""The error a user's mistake raises, everywhere in polychip.

A `PolychipError` message names the value, the rule it broke and the fix. The CLI turns
it into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class PolychipError(ValueError):
    """A user's mistake: bad input file, impossible request, missing capability."""


class SpecError(PolychipError):
    """A malformed input file; says which file and which key path."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key


class InfeasibleError(PolychipError):
    """A job that no plan can satisfy; the message names the limit and the fix."""


def key_path(loc: tuple[str | int, ...]) -> str:
    """Render a pydantic error location as a key path: nodes[1].chip"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_message(exc: object, file: str | None) -> SpecError:
    """One readable SpecError from a pydantic ValidationError (first problem, count of rest)."""
    errors = exc.errors()  # type: ignore[attr-defined]
    first = errors[0]
    loc = key_path(tuple(p for p in first["loc"] if p not in ("function-after",)))
    msg = first["msg"]
    if first.get("type") == "extra_forbidden":
        msg = "unknown key (check its spelling against docs/cluster-format.md)"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return SpecError(f"{msg}{more}", file=file, key=loc or None)
