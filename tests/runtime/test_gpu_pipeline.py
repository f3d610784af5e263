"""On a GPU: a pipeline whose first stage runs on a CUDA chip and whose second runs on a CPU
chip of another vendor (two islands). Activations and gradients cross the gloo bridge staged
through host memory; training matches single-process training on the CPU."""

from __future__ import annotations

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


def _gpu_cpu_plan() -> Plan:
    c = cluster([{"chip": "h100", "count": 1, "chips_per_node": 1, "nic_gbps": 100},
                 {"chip": "cpu-fast", "count": 1, "chips_per_node": 1, "nic_gbps": 10}])
    return pp_plan(c, [([(0, 1, 0, (0,), "h100"), (1, 4, 1, (0,), "cpu-fast")], 6, 2)],
                   model=TINY4)


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


def test_a_cuda_stage_and_a_cpu_stage_train_like_one_process(tmp_path: Path) -> None:
    run_ranks(_worker, 2, tmp_path, _gpu_cpu_plan())
