"""`polychip profile`'s host work: what a rank of `polychip train` spends outside its timed
phases -- reading each micro-batch, Python between the schedule's actions, zeroing the
gradients, completing the sends -- which a run's metrics count as ``idle_s``.

It is measured with the runtime's own executor (:class:`polychip.runtime.train.Trainer`, a
plain :class:`~polychip.runtime.clock.WallClock`) on one rank holding one stage of one block,
the embedding and the head, at each micro-batch size of the grid: steps of M = 2 and of
M = 4 micro-batches (after a warm-up step), the median idle seconds of each; the slope is the
host work per micro-batch, the rest the host work per step. The chip's figures in the
one-rank plan are placeholders: nothing is emulated, the clock only measures."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from polychip.plan.plan import Plan, Replica, Stage
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec
from polychip.spec.profile import HostPoint

MICRO_BATCH_COUNTS = (2, 4)  # micro-batches per step of the two runs; the slope is per one
TIMED_STEPS = 5  # per run, after one warm-up step; the median idle is kept
RUN_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16"}  # TrainConfig.dtype
BYTE_VOCAB = 256  # the default corpus is read as bytes
CHIP = "profiled-chip"  # the one-rank plan's chip: placeholder figures, never emulated


def host_plan(model: ModelSpec, device_type: str, backend: str, precision: str,
              micro_batch: int, seq_len: int, num_micro_batches: int) -> Plan:
    """One rank, one stage: a block, the embedding and the head, `num_micro_batches`
    micro-batches of `micro_batch` sequences per step."""
    chip = {"vendor": "profile", "device_type": device_type, "torch_backend": backend,
            "collective_library": backend, "peak_tflops_bf16": 1, "peak_tflops_fp32": 1,
            "memory_gib": 1, "memory_gbps": 1, "intra_node_gbps": 1}
    cluster = cluster_from_dict({"name": "profile", "chips": {CHIP: chip}, "nodes": [
        {"chip": CHIP, "count": 1, "chips_per_node": 1, "nic_gbps": 1}]})
    batch = micro_batch * num_micro_batches
    return Plan(cluster, dataclasses.replace(model, num_layers=1),
                TrainingJob(batch, seq_len, precision=precision),
                (Replica((Stage(0, 1, 0, (0,), CHIP),), batch, micro_batch),))


def measurable(model: ModelSpec, precision: str) -> bool:
    """The runtime computes in fp32 or bf16 and reads its default corpus as bytes."""
    return precision in RUN_DTYPES and model.vocab_size >= BYTE_VOCAB


def measure_host(model: ModelSpec, device_type: str, backend: str, precision: str,
                 points: list[tuple[int, int]], tick: Callable[[str], None]
                 ) -> tuple[tuple[HostPoint, ...], float | None]:
    """(host seconds per micro-batch at each (micro_batch, seq_len) of `points`, host
    seconds per step: the median over the points), in a one-rank process group of its own."""
    from polychip.runtime.topology import build_topology, rank_roles, world_backend
    from polychip.runtime.train import TrainConfig, Trainer

    out, per_step = [], []
    with tempfile.TemporaryDirectory(prefix="polychip-host-") as work:
        first = host_plan(model, device_type, backend, precision, 1, points[0][1], 1)
        dist.init_process_group(world_backend(rank_roles(first, emulate=False)),
                                init_method=f"file://{Path(work) / 'store'}", rank=0,
                                world_size=1)
        try:
            for micro_batch, seq_len in points:
                idle = []
                for m in MICRO_BATCH_COUNTS:
                    plan = host_plan(model, device_type, backend, precision, micro_batch,
                                     seq_len, m)
                    config = TrainConfig(steps=1 + TIMED_STEPS, dtype=RUN_DTYPES[precision])
                    trainer = Trainer(plan, config, build_topology(plan, 0, emulate=False))
                    records = trainer.run(1 + TIMED_STEPS)[1:]
                    idle.append(statistics.median(r.idle_s for r in records))
                (m0, m1), (i0, i1) = MICRO_BATCH_COUNTS, idle
                slope = max(0.0, (i1 - i0) / (m1 - m0))
                out.append(HostPoint(micro_batch, seq_len, slope))
                per_step.append(max(0.0, i0 - m0 * slope))
                tick(f"host work, micro-batch {micro_batch} x {seq_len}")
        finally:
            dist.destroy_process_group()
    return tuple(out), (statistics.median(per_step) if per_step else None)
