"""Start real gloo process groups on the CPU for tests: mp.spawn + a file store in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
