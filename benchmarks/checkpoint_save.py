"""What an asynchronous checkpoint costs a training step, measured side by side in one run.

The demo's model (`tiny`) and job (32 x 128 tokens per step, fp32, AdamW), on a plan of two
equal data-parallel ranks (one per core of a 2-core machine; not emulated: real compute, so
the writer thread competes with it for the cores). In each round, blocks of ``--steps`` steps
alternate: no save, a save after every step, a save every 10 steps (``--interval``, in the
middle of the block, so that its write overlaps the steps after it as in a long run). A
block's time includes its saves and waiting for its last write, so the writer's cost lands in
it, whichever step it slows. Per mode: the mean step time of a block (median over rounds) and
the overhead, the median over rounds of (the block's step time / the same round's no-save
block's) - 1: ratios measured side by side, robust to the load of other jobs on the machine.
Also: bytes written per save, the synchronous part of a save (rank 0's ``save()`` call:
gathering the optimizer state, the copy to host memory, the manifest) and the writer thread's
seconds (``torch.save`` of the rank's tensors).

    PYTHONPATH=src python benchmarks/checkpoint_save.py --json out/checkpoint_save.json
    PYTHONPATH=src python benchmarks/checkpoint_save.py --quick   # seconds, no figures
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from polychip.cli.demo import DEMO_JOB
from polychip.plan import Plan, Replica, Stage, validate_plan
from polychip.runtime.launch import launch_local
from polychip.runtime.train import TrainConfig
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.model import PRESETS

MODEL = PRESETS["tiny"]  # the demo's model
TARGET = 0.05


def two_rank_plan() -> Plan:
    cluster = cluster_from_dict({"name": "two-cores", "nodes": [
        {"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10}]})
    share = DEMO_JOB.global_batch // 2
    plan = Plan(cluster, MODEL, DEMO_JOB, tuple(
        Replica((Stage(0, MODEL.num_layers, 0, (d,), "cpu-slow"),), share, 4) for d in range(2)))
    validate_plan(plan)
    return plan


@dataclass(frozen=True)
class SaveCostTask:
    """Rounds of blocks (no save / every step / every ``interval``); rank 0 returns the
    timings."""

    config: TrainConfig
    root: str
    rounds: int
    steps: int
    interval: int
    warmup: int = 5
    emulate: bool = False

    @property
    def timeout(self) -> timedelta:
        return self.config.timeout

    def __call__(self, plan: Plan, rank: int) -> dict | None:
        from polychip.runtime.topology import build_topology
        from polychip.runtime.train import Trainer

        trainer = Trainer(plan, self.config, build_topology(plan, rank, emulate=False))
        saver = _timed_checkpointer(trainer, self.root)
        for step in range(self.warmup):
            trainer.step(step)
        saver.save(self.warmup)  # the first save's one-off costs (imports, folders): untimed
        saver.wait()
        saver.sync_s.clear()
        saver.write_s.clear()
        step = self.warmup
        modes = {"no_save": 0, "every_step": 1, f"every_{self.interval}": self.interval}
        blocks: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(self.rounds):
            for mode, every in modes.items():
                blocks[mode].append(_block(trainer, saver, step, self.steps, every))
                step += self.steps
        if rank != 0:
            return None
        return {"blocks": blocks, "sync_s": saver.sync_s, "write_s": saver.write_s,
                "bytes_per_save": _bytes_of(saver.last_saved)}


def _block(trainer: Any, saver: Any, start: int, steps: int, every: int) -> float:
    """Mean seconds per step over ``steps`` steps, saving once in the middle of every
    ``every`` steps (0: never), waiting at the end for the last write."""
    begin = time.perf_counter()
    for i in range(steps):
        trainer.step(start + i)
        if every and (i + 1) % every == ((every + 1) // 2) % every:
            saver.save(start + i + 1)
    saver.wait()
    return (time.perf_counter() - begin) / steps


def _timed_checkpointer(trainer: Any, root: str) -> Any:
    """A Checkpointer that records each save() call's and each write's seconds."""
    from polychip.runtime.checkpoint import Checkpointer

    class Timed(Checkpointer):
        sync_s: list[float]
        write_s: list[float]

        def save(self, step: int, extra: dict | None = None) -> Path:
            self.wait()  # waiting for the previous write is not the synchronous part
            begin = time.perf_counter()
            folder = super().save(step, extra)
            self.sync_s.append(time.perf_counter() - begin)
            return folder

        def _write(self, path: Path, tensors: dict) -> None:
            begin = time.perf_counter()
            super()._write(path, tensors)
            self.write_s.append(time.perf_counter() - begin)

    saver = Timed(trainer, root, keep=2)
    saver.sync_s, saver.write_s = [], []
    return saver


def _bytes_of(folder: Path | None) -> int:
    return sum(p.stat().st_size for p in folder.iterdir()) if folder else 0


def measure(rounds: int, steps: int, interval: int, warmup: int = 5) -> dict:
    if steps % interval:
        raise SystemExit(f"--steps {steps} must be a multiple of --interval {interval}")
    plan = two_rank_plan()
    root = tempfile.mkdtemp(prefix="polychip-ckpt-bench-")
    try:
        task = SaveCostTask(TrainConfig(steps=1), root, rounds, steps, interval, warmup)
        raw = launch_local(plan, task)[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    blocks, every = raw["blocks"], f"every_{interval}"

    def overhead(mode: str) -> float:  # the median of each round's ratio to its no-save block
        return statistics.median(a / b for a, b in zip(blocks[mode], blocks["no_save"],
                                                       strict=True)) - 1.0

    return {
        "model": MODEL.name, "model_params": MODEL.num_params, "ranks": plan.world_size,
        "tokens_per_step": plan.job.tokens_per_step, "precision": plan.job.precision,
        "rounds": rounds, "steps_per_block": steps, "interval": interval,
        "step_s_no_save": statistics.median(blocks["no_save"]),
        "step_s_save_every_step": statistics.median(blocks["every_step"]),
        f"step_s_save_{every}": statistics.median(blocks[every]),
        "save_overhead_fraction": overhead("every_step"),
        f"save_overhead_fraction_{every}": overhead(every),
        "bytes_per_save": raw["bytes_per_save"],
        "sync_s_median": statistics.median(raw["sync_s"]),
        "write_s_median": statistics.median(raw["write_s"]),
        "num_saves": len(raw["sync_s"]),
        "block_step_s": blocks,
        "target_overhead_fraction": TARGET,
    }


def report(f: dict) -> None:
    every = f"every_{f['interval']}"
    print(f"\n{f['model']} ({f['model_params'] / 1e6:.2f} M parameters), {f['ranks']} ranks, "
          f"{f['tokens_per_step']} tokens/step, {f['precision']}; {f['rounds']} rounds of "
          f"{f['steps_per_block']}-step blocks")
    print("| saving | step (ms, median) | overhead (median of the rounds' ratios) |")
    print("|---|---:|---:|")
    print(f"| never | {f['step_s_no_save'] * 1e3:.1f} | |")
    print(f"| every step | {f['step_s_save_every_step'] * 1e3:.1f} | "
          f"{f['save_overhead_fraction']:+.1%} |")
    print(f"| every {f['interval']} steps | {f[f'step_s_save_{every}'] * 1e3:.1f} | "
          f"{f[f'save_overhead_fraction_{every}']:+.1%} |")
    print(f"\nper save: {f['bytes_per_save'] / 1e6:.2f} MB written; synchronous part (gather, "
          f"copy to host, manifest) {f['sync_s_median'] * 1e3:.2f} ms, writer thread "
          f"{f['write_s_median'] * 1e3:.2f} ms (medians of {f['num_saves']} saves); target: "
          f"overhead <= {TARGET:.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--steps", type=int, default=10,
                        help="steps per block, a multiple of --interval (default 10)")
    parser.add_argument("--interval", type=int, default=10,
                        help="the realistic save interval, in steps (default 10)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 2 steps")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    if args.quick:
        figures = measure(2, 2, 2, warmup=1)
    else:
        figures = measure(args.rounds, args.steps, args.interval)
    report(figures)
    print(f"({time.perf_counter() - begin:.0f} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**figures, "quick": args.quick}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
