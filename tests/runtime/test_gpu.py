"""A CUDA island beside a CPU island, for real (no emulation). Skips without a CUDA GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polychip.plan import Plan, save_plan
from polychip.runtime.topology import build_topology, world_backend
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import ROOT, cluster, dp_plan
from .reference import CORPUS_BYTES, single_process

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]


def _cuda_cpu_plan() -> Plan:
    """12 samples on an H100 (NCCL island, 3 micro-batches), 4 on a CPU chip (gloo island)."""
    c = cluster([{"chip": "h100", "count": 1, "chips_per_node": 1, "nic_gbps": 100},
                 {"chip": "cpu-slow", "count": 1, "chips_per_node": 1, "nic_gbps": 10}])
    return dp_plan(c, [(0, 0, "h100", 12, 4), (1, 0, "cpu-slow", 4, 2)])


def _cuda_cpu_worker(rank: int, world_size: int, plan: Plan) -> None:
    config = TrainConfig(steps=3, dtype="float64", max_corpus_bytes=CORPUS_BYTES)
    topology = build_topology(plan, rank, emulate=False, timeout=config.timeout)
    assert world_backend(topology.roles) == "gloo"
    assert topology.device.type == ("cuda" if rank == 0 else "cpu")
    assert topology.roles[0].backend == "nccl" and topology.roles[1].backend == "gloo"
    trainer = Trainer(plan, config, topology)
    records = trainer.run(config.steps)
    assert records[0].memory_kind == ("device-allocator" if rank == 0 else "cpu-tensors")
    held = sum(t.numel() * t.element_size() for t in (
        *trainer.model.parameters(), trainer.grads.buffer,
        *(v for st in trainer.optimizer.inner.state.values() for v in st.values()
          if isinstance(v, torch.Tensor))))
    assert records[-1].peak_memory_bytes >= held  # the allocator's peak: at least these

    ref_losses, ref_params = single_process(plan, config)
    for record, expected in zip(records, ref_losses, strict=True):
        assert record.global_loss == pytest.approx(expected, abs=1e-9)
    for name, p in trainer.model.named_parameters():  # GPU and CPU kernels round differently
        torch.testing.assert_close(p.cpu(), ref_params[name], rtol=0, atol=1e-9,
                                   msg=f"rank {rank} {name}")


def test_cuda_and_cpu_islands_train_like_one_process(tmp_path: Path) -> None:
    run_ranks(_cuda_cpu_worker, 2, tmp_path, _cuda_cpu_plan())


def test_train_command_on_a_gpu_and_a_cpu(tmp_path: Path) -> None:
    plan_path, metrics = tmp_path / "plan.json", tmp_path / "m.jsonl"
    save_plan(_cuda_cpu_plan(), plan_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "polychip", "train", str(plan_path),
                           "--steps", "3", "--metrics", str(metrics)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    assert "no emulation" in done.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    gpu = [r for r in records if r["chip"] == "h100"]
    assert len(gpu) == 3 and all(r["memory_kind"] == "device-allocator" for r in gpu)
    assert all(r["emulated_time"] is None and r["compute_s"] > 0 for r in records)
    assert records[-1]["global_loss"] < records[0]["global_loss"]
