"""The layering of docs/architecture.md (docs/design.md), enforced: imports point down,
torch only in the runtime."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "polychip"
# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = ["spec", "plan", "costmodel", "simulator", "planner", "runtime", "elastic", "cli"]
# The runtime reads plans; it never reaches into the planner or the simulator.
FORBIDDEN = {"runtime": {"planner", "simulator"}}


def _layer_of(path: Path) -> str | None:
    rel = path.relative_to(SRC).parts
    return rel[0] if rel[0] in LAYERS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if _layer_of(p))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    layer = _layer_of(path)
    assert layer is not None
    allowed = set(LAYERS[: LAYERS.index(layer) + 1]) - FORBIDDEN.get(layer, set())
    for lineno, name in _imports(path):
        parts = name.split(".")
        if parts[0] == "polychip" and len(parts) > 1 and parts[1] in LAYERS:
            assert parts[1] in allowed, f"{path.name}:{lineno} ({layer}) imports {name}"
        if parts[0] == "torch":
            assert layer == "runtime", f"{path.name}:{lineno}: torch outside the runtime"


def test_planning_imports_no_torch() -> None:
    code = (
        "import sys, polychip.cli, polychip.planner, polychip.simulator, polychip.costmodel;"
        "from polychip.cli import build_parser; build_parser();"
        "assert 'torch' not in sys.modules, 'torch imported by planning code'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
