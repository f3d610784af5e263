"""benchmarks/runtime_dp.py runs (its quick mode) and reports the interface's figures: the
bridge bytes are measured from the runtime's own calls, so their ratio to the cost model's is
checked here; the times are only for a quiet machine (benchmarks/RESULTS-runtime.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .plans import ROOT


@pytest.mark.dist
def test_runtime_dp_benchmark_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "runtime_dp.py"),
                           "--quick", "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    figures = json.loads(out.read_text())
    assert math.isfinite(figures["overhead_vs_ddp"]) and figures["quick"] is True
    # the island leader sends its own shard over the bridge: the cost model's bytes (plus the
    # buffer's padding and loss slot), half of what a leader-only bridge would send
    assert 1.0 <= figures["bridge_bytes_ratio"] <= 1.01
    bridge = figures["bridge"]
    assert bridge["leader_only_bridge_bytes"] == pytest.approx(
        bridge["ranks_per_island"] * bridge["leader_bridge_bytes_measured"], rel=1e-3)
    assert set(bridge["sync_s"]) == {"sharded", "leader_only"}
    assert "overhead_vs_ddp" in done.stdout and "bridge_bytes_ratio" in done.stdout


@pytest.mark.dist
def test_checkpoint_save_benchmark_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "checkpoint_save.py"),
                           "--quick", "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    f = json.loads(out.read_text())
    assert f["quick"] is True and f["step_s_no_save"] > 0
    assert math.isfinite(f["save_overhead_fraction"]) and f["sync_s_median"] > 0
    # a save holds the fp32 master, AdamW's m and v of every parameter (+ the file format's
    # and the manifest's few kilobytes)
    assert 12 * f["model_params"] <= f["bytes_per_save"] < 1.05 * 12 * f["model_params"]
