"""The round trip on this CPU, as a user runs it: `polychip profile --quick` -> `polychip plan
--profile` -> `polychip train` (not emulated, 2 steps) -> `polychip calibrate`. The mechanism,
not the timing: every command succeeds, the calibrated profile keeps the measured points and
adds corrections, and the memory the run counted is the estimate's (counted tensors are not
timings: they do not depend on the load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polychip.cli import main
from polychip.plan import load_plan
from polychip.spec.profile_file import load_profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.dist
def test_profile_plan_train_calibrate_on_this_cpu(tmp_path: Path, capsys) -> None:
    profile, plan, metrics = tmp_path / "cpu.json", tmp_path / "plan.json", tmp_path / "m.jsonl"
    assert main(["profile", "--model", "tiny", "--chip", "this-cpu", "--quick",
                 "--collective-ranks", "0", "--out", str(profile)]) == 0
    assert main(["plan", str(ROOT / "examples" / "clusters" / "this-cpu.yaml"), "--model",
                 "tiny", "--global-batch", "4", "--seq-len", "64", "--precision", "fp32",
                 "--no-zero1", "--profile", str(profile), "--out", str(plan)]) == 0
    text = tmp_path / "text.txt"
    text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    done = subprocess.run(
        [sys.executable, "-m", "polychip", "train", str(plan), "--steps", "2", "--data",
         str(text), "--metrics", str(metrics)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr + done.stdout
    assert "MEASURED on this machine" in done.stdout
    capsys.readouterr()
    out, cmp = tmp_path / "calibrated.json", tmp_path / "cmp.json"
    assert main(["calibrate", str(metrics), str(plan), "--profile", str(profile), "--out",
                 str(out), "--json", str(cmp)]) == 0
    shown = capsys.readouterr().out
    assert "compute" in shown and "profiled" in shown and "calibrated.json" in shown
    measured, calibrated = load_profile(profile), load_profile(out)
    assert calibrated.blocks == measured.blocks and calibrated.host == measured.host
    assert calibrated.corrections.compute > 0 and calibrated.corrections.optimizer > 0
    figures = json.loads(cmp.read_text())
    stages = sum(r.num_stages for r in load_plan(plan).replicas)
    assert len(figures["stages"]["measured"]) == len(figures["stages"]["estimated"]) == stages
    for m, e in zip(figures["stages"]["measured"], figures["stages"]["estimated"], strict=True):
        assert e["peak_memory_bytes"] == pytest.approx(m["peak_memory_bytes"], rel=0.05)
        assert m["compute_s"] > 0 and e["compute_s"] > 0
