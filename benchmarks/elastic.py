"""Elastic training, measured: one emulated chip's process is killed mid-run; the supervisor
re-plans on the surviving chips (the planner, same global batch), resumes from the newest
checkpoint and finishes the job.

The demo's set-up (examples/clusters/cpu-test.yaml: chips of speeds 1 : 1 : 2 : 4, the
`tiny` model, 32 x 128 tokens per step, data parallel), emulated at a fixed dilation. Rank
``--kill-rank`` kills itself (SIGKILL, as an out-of-memory killer would) right after step
``--kill-after``; saves every ``--save-every`` steps.

    PYTHONPATH=src python benchmarks/elastic.py --json elastic.json

Reports (JSON): steps_planned, steps_completed, steps_recomputed, recovery_s (the dying
rank's last step ended -> the first step of the new plan ended, wall clock), the loss before
the failure and after the recovery (the same step, computed by the old and by the new plan),
the re-plan's old and new estimates and chips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from polychip.cli.demo import DEMO_JOB, demo_cluster
from polychip.elastic.supervisor import run_elastic
from polychip.planner.api import plan_job
from polychip.runtime.faults import FAULT_ENV
from polychip.runtime.metrics import read_metrics
from polychip.runtime.train_config import TrainConfig
from polychip.spec.model import PRESETS


def _loss(records: list[dict], step: int) -> float:
    return next(r["global_loss"] for r in records if r["step"] == step and r["loss"] is not None)


def measure(steps: int, save_every: int, kill_rank: int, kill_after: int, dilation: float,
            work: Path) -> dict:
    plan = plan_job(demo_cluster(), PRESETS["tiny"], DEMO_JOB, max_stages=1)
    metrics = work / "metrics.jsonl"
    config = TrainConfig(steps=steps, emulate=True, dilation=dilation,
                         checkpoint_dir=str(work / "ckpt"), save_every=save_every,
                         metrics_path=str(metrics))
    before: dict[str, object] = {}

    def say(line: str) -> None:  # after the failed attempt's records joined the metrics file
        print(line, file=sys.stderr)
        old = read_metrics(metrics)
        dying = [r for r in old if r["rank"] == kill_rank]
        before.update(died_at=max(r["finished_at"] for r in dying),
                      loss=_loss(old, kill_after), steps_done=1 + max(r["step"] for r in old))

    os.environ[FAULT_ENV] = f"{kill_rank}:{kill_after}"
    start = time.monotonic()
    done = run_elastic(plan, config, max_restarts=1, say=say)
    wall = time.monotonic() - start
    (event,) = done.replans
    records = read_metrics(metrics)
    resumed = event.resumed_step
    first_new = min(r["finished_at"] for r in records if r["step"] == resumed)
    return {
        "steps_planned": steps,
        "steps_completed": len({r["step"] for r in records}),
        "steps_recomputed": int(before["steps_done"]) - resumed,
        "save_every": save_every,
        "recovery_s": first_new - float(before["died_at"]),
        "detect_s": event.detected_at - float(before["died_at"]),
        "replan_s": event.replan_s,
        "loss_before_failure": before["loss"],
        "loss_after_recovery": _loss(records, kill_after),
        "loss_step": kill_after,
        "old_chips": event.old_world, "new_chips": event.new_world,
        "old_estimate_tokens_per_s": event.old_tokens_per_s,
        "new_estimate_tokens_per_s": event.new_tokens_per_s,
        "died": f"rank {event.died_rank} ({event.died_chip})",
        "resumed_step": resumed, "wall_s": wall, "dilation": dilation,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--save-every", type=int, default=4)
    p.add_argument("--kill-rank", type=int, default=1)
    p.add_argument("--kill-after", type=int, default=6)
    p.add_argument("--dilation", type=float, default=20.0)
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = measure(args.steps, args.save_every, args.kill_rank, args.kill_after,
                      args.dilation, Path(tmp))
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
