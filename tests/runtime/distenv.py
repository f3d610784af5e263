"""Start real gloo process groups on the CPU for tests: mp.spawn + a file store in tmp_path;
a run in which one rank dies; `polychip train` as a user runs it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polychip.plan import Plan, save_plan
from polychip.runtime.errors import DistributedRunError
from polychip.runtime.session import run_logged
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

TIMEOUT = timedelta(seconds=60)


def run_ranks(fn: Callable[..., None], world_size: int, tmp_path: Path, *args: object) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined by gloo.

    ``fn`` must be a module-level function. An exception in any rank stops all ranks and is
    raised here with the rank's traceback.
    """
    store = tmp_path / "filestore"
    mp.spawn(_entry, args=(fn, world_size, str(store), args), nprocs=world_size, join=True)


def _entry(rank: int, fn: Callable[..., None], world_size: int, store: str,
           args: tuple[object, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size, timeout=TIMEOUT)
    try:
        fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_with_a_dying_rank(plan: Plan, config: TrainConfig, tmp_path: Path, world_size: int,
                          dying_rank: int, die_at_call: int) -> dict[int, tuple[float, str]]:
    """Train ``plan`` on ``world_size`` gloo processes, rank ``dying_rank`` exiting (code 3)
    inside its forward call number ``die_at_call`` (0-based). Asserts that no surviving rank
    hung; returns each survivor's seconds to fail and its DistributedRunError message."""
    ctx = mp.get_context("spawn")
    store, out = str(tmp_path / "store"), str(tmp_path)
    procs = [ctx.Process(target=_dying_worker,
                         args=(r, world_size, store, plan, out, config, dying_rank, die_at_call))
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 90
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, "surviving ranks hung"
    assert procs[dying_rank].exitcode == 3
    outcomes = {}
    for rank in range(world_size):
        if rank != dying_rank:
            elapsed, message = (tmp_path / f"rank{rank}.txt").read_text().split(" ", 1)
            outcomes[rank] = (float(elapsed), message)
    return outcomes


def _dying_worker(rank: int, world_size: int, store: str, plan: Plan, out: str,
                  config: TrainConfig, dying_rank: int, die_at_call: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size, timeout=TIMEOUT)
    trainer = Trainer(plan, config, build_topology(plan, rank, emulate=config.emulate,
                                                   timeout=config.timeout))
    if rank == dying_rank:
        forward, calls = trainer.model.forward, itertools.count()

        def dying_forward(x: torch.Tensor) -> torch.Tensor:
            if next(calls) == die_at_call:
                os._exit(3)
            return forward(x)

        trainer.model.forward = dying_forward  # type: ignore[method-assign]
    begin = time.monotonic()
    try:
        run_logged(trainer)  # as `polychip train` runs it: per-step log when metrics are asked
        outcome = "finished"
    except DistributedRunError as exc:
        outcome = f"{time.monotonic() - begin:.1f} {exc}"
    Path(out, f"rank{rank}.txt").write_text(outcome)
    dist.destroy_process_group()


def train_command(plan: Plan, tmp_path: Path) -> tuple[str, list[dict]]:
    """`polychip train PLAN --steps 2 --emulate --dilation 3 --metrics ...` in a subprocess,
    on a small text file (not the 8 MB default corpus): its stdout and metrics records. The
    tiny models' cost-model times are microseconds: a given dilation keeps the emulated
    communication slots short (the automatic one is exercised by the demo)."""
    plan_path, metrics = tmp_path / "plan.json", tmp_path / "metrics.jsonl"
    save_plan(plan, plan_path)
    text = tmp_path / "text.txt"
    text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "polychip", "train", str(plan_path), "--steps", "2",
         "--emulate", "--dilation", "3", "--data", str(text), "--metrics", str(metrics)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)}, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout, [json.loads(line) for line in metrics.read_text().splitlines()]
