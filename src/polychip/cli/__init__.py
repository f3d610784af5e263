"""Command line: wires files to the public functions of the layers below; no logic.

One module per command (`prepare_data` registers `prepare-data`), each with
`register(subparsers)` adding its parser and setting `func`. A user's mistake (PolychipError)
prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from polychip import __version__
from polychip.spec.errors import PolychipError

COMMANDS = (
    "plan", "simulate", "estimate", "profile", "train", "calibrate", "launch", "demo",
    "validate", "catalog", "prepare_data", "whatif",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polychip",
        description="Plan, simulate and run one LLM training job across mixed-vendor chips.",
    )
    parser.add_argument("--version", action="version", version=f"polychip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"polychip.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"polychip.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PolychipError as exc:
        print(f"polychip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polychip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
