"""`polychip train` as a user runs it: Ctrl-C stops at a step boundary, saves, and says so in
one line; `--resume` continues the step count; a checkpoint that cannot be resumed is refused
before any process starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polychip.plan import save_plan
from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest

from .plans import cpu_test_plan

SRC = Path(__file__).resolve().parents[2] / "src"


def _command(tmp_path: Path, steps: int, *extra: str) -> list[str]:
    plan_path, text = tmp_path / "plan.json", tmp_path / "text.txt"
    if not plan_path.exists():
        save_plan(cpu_test_plan(), plan_path)
        text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    return [sys.executable, "-m", "polychip", "train", str(plan_path), "--steps", str(steps),
            "--emulate", "--dilation", "3", "--data", str(text), "--metrics",
            str(tmp_path / "metrics.jsonl"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(SRC)})


def _steps_logged(tmp_path: Path) -> int:
    logs = list(tmp_path.glob("metrics.jsonl.rank*"))
    return min((len(p.read_text().splitlines()) for p in logs), default=0) if logs else 0


@pytest.mark.dist
def test_ctrl_c_saves_at_a_step_boundary_and_resume_continues(tmp_path: Path) -> None:
    # Ctrl-C: SIGINT to the terminal's whole process group (the CLI and every rank).
    proc = subprocess.Popen(_command(tmp_path, 10_000), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    deadline = time.monotonic() + 120
    while _steps_logged(tmp_path) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 128 + signal.SIGINT, err + out
    assert "Traceback" not in err + out
    saved = latest_complete(tmp_path / "ckpt")
    assert saved is not None, err + out
    step = read_manifest(saved).step
    assert 2 <= step < 10_000
    lines = [line for line in out.splitlines() if "SIGINT stopped the run" in line]
    assert len(lines) == 1 and f"saved step {step}" in lines[0], out

    done = _run(_command(tmp_path, step + 2, "--resume"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"continuing from step {step}" in done.stdout
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in records}) == list(range(step + 2))  # continued
    assert read_manifest(latest_complete(tmp_path / "ckpt")).step == step + 2


@pytest.mark.dist
def test_a_checkpoint_of_another_model_or_already_done_is_refused(tmp_path: Path) -> None:
    done = _run(_command(tmp_path, 2))
    assert done.returncode == 0, done.stderr + done.stdout
    again = _run(_command(tmp_path, 2, "--resume"))
    assert again.returncode == 2 and "raise --steps" in again.stderr + again.stdout
    manifest = tmp_path / "ckpt" / "step-000002" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["model"]["hidden_size"] = 32
    manifest.write_text(json.dumps(raw))
    other = _run(_command(tmp_path, 4, "--resume"))
    assert other.returncode == 2
    assert "hidden_size 32 (checkpoint) vs 16 (plan)" in other.stderr + other.stdout
