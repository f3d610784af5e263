"""On a GPU: a pipeline whose first stage runs on a CUDA chip and whose second runs on a CPU
chip of another vendor (two islands), under each schedule the planner searches (1F1B,
interleaved 1F1B with two model chunks per stage, ZB-H1). Activations and gradients cross the
gloo bridge staged through host memory; training matches single-process training on the
CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from polychip.plan import Plan
from polychip.runtime.topology import build_topology
from polychip.runtime.train import Trainer

from .distenv import run_ranks
from .plans import TINY4, cluster, pp_plan
from .reference import single_process
from .test_pipeline import STEPS, _config

pytestmark = [pytest.mark.gpu, pytest.mark.dist,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _gpu_cpu_plan(schedule: str = "1f1b") -> Plan:
    """Layers 0 | 1-3 on the GPU and the CPU chip, 3 micro-batches of 2; interleaved: layers
    0 and 2 on the GPU, 1 and 3 on the CPU chip, 4 micro-batches of 2 (whole groups of the
    2 stages, as interleaving needs)."""
    c = cluster([{"chip": "h100", "count": 1, "chips_per_node": 1, "nic_gbps": 100},
                 {"chip": "cpu-fast", "count": 1, "chips_per_node": 1, "nic_gbps": 10}])
    if schedule != "interleaved-1f1b":
        return pp_plan(c, [([(0, 1, 0, (0,), "h100"), (1, 4, 1, (0,), "cpu-fast")], 6, 2)],
                       model=TINY4, schedule=schedule)
    staged = pp_plan(c, [([(0, 2, 0, (0,), "h100"), (2, 4, 1, (0,), "cpu-fast")], 8, 2)],
                     model=TINY4, schedule=schedule)
    return dataclasses.replace(staged, virtual_stages=2)


def _worker(rank: int, world_size: int, plan: Plan) -> None:
    config = _config(False)
    ref_losses, ref_params = single_process(plan, config)
    trainer = Trainer(plan, config, build_topology(plan, rank, emulate=False,
                                                   timeout=config.timeout))
    assert trainer.device.type == ("cuda" if rank == 0 else "cpu")
    assert trainer.topology.groups.routes[1 - rank].staged == (rank == 0)
    records = trainer.run(STEPS)
    if rank == 1:
        for record, expected in zip(records, ref_losses, strict=True):
            assert record.global_loss == pytest.approx(expected, abs=1e-10)
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.detach().cpu(), ref_params[name], rtol=0, atol=1e-10,
                                   msg=f"rank {rank} {name}")


@pytest.mark.parametrize("schedule", ["1f1b", "interleaved-1f1b", "zb-h1"])
def test_a_cuda_stage_and_a_cpu_stage_train_like_one_process(tmp_path: Path,
                                                             schedule: str) -> None:
    run_ranks(_worker, 2, tmp_path, _gpu_cpu_plan(schedule))
