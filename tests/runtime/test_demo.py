"""`polychip demo` end to end, and its built-in cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .plans import CPU_TEST, ROOT


def test_builtin_demo_cluster_is_the_cpu_test_example() -> None:
    packaged = ROOT / "src" / "polychip" / "examples" / "cpu-test.yaml"
    assert packaged.read_text() == CPU_TEST.read_text()


@pytest.mark.dist
def test_demo_plans_trains_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "polychip", "demo", "--steps", "3",
                           "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "EMULATED" in done.stdout and "speed-up" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["emulated"] is True
    assert set(figures["chips"]) == {"cpu-slow", "cpu-mid", "cpu-fast"}  # every chip type
    assert sum(figures["shares_planned"]) == sum(figures["shares_even"]) == 32
    for key in ("planned_tokens_per_s", "even_tokens_per_s", "theoretical_speedup",
                "measured_speedup"):
        assert figures[key] > 0
    assert figures["loss_last"] < figures["loss_first"]
    assert figures["max_loss_difference_even_vs_planned"] < 1e-4  # same mathematics
