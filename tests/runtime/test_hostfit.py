"""Runs that fit the host: `polychip train` refuses, before starting a process, a plan whose
ranks outnumber this host's devices or cores, or whose memory exceeds what it has (a fake
host stands for this one)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import polychip.runtime.hostfit as hostfit
import polychip.runtime.launch as launch
from polychip.cli import main
from polychip.costmodel.estimate import CostModel
from polychip.plan import save_plan
from polychip.runtime.hostfit import (
    FORKED_RANK_BYTES,
    GIB,
    SPAWNED_RANK_BYTES,
    Host,
    fit_problems,
    rank_host_bytes,
    stage_params,
)
from polychip.runtime.model import build_stage
from polychip.runtime.tensor_parallel import TensorParallel
from polychip.runtime.topology import roles_of
from polychip.runtime.train import TrainConfig
from polychip.spec.model import PRESETS

from .plans import cpu_test_plan, hybrid_plan
from .test_topology import _npu_plan

ROOMY = Host(cores=64, memory_available_bytes=64 * GIB, devices={})


def test_a_cpu_rank_needs_its_stage_as_built_its_activations_and_its_process() -> None:
    plan = hybrid_plan()  # TP 2 on a last stage: sliced blocks, the head whole
    cost = CostModel(plan.cluster, plan.model, plan.job)
    for role in roles_of(plan, emulate=True):
        built = build_stage(plan.model, role.layer_start, role.layer_end,
                            has_embedding=role.first_stage, has_head=role.last_stage,
                            tp=TensorParallel(role.tp_size, role.tp_rank,
                                              vocab_parallel=plan.job.vocab_parallel))
        params = sum(p.numel() for p in built.parameters())
        assert stage_params(plan, role) == params
        rep = plan.replicas[role.replica]
        activations = cost.memory_of(rep, role.stage, plan.schedule, 1).activations
        job = plan.job  # bf16 weights, the fp32 gradient buffer, fp32 master + AdamW m, v
        want = (params * (job.compute_bytes + job.reduce_bytes + 12) + activations
                + FORKED_RANK_BYTES)
        assert rank_host_bytes(plan, role, TrainConfig(emulate=True)) == want
        exact = (params * 8 * (2 + 2) + activations * 8 // job.compute_bytes
                 + FORKED_RANK_BYTES)  # float64 weights, gradients, AdamW's m and v
        assert rank_host_bytes(plan, role, TrainConfig(emulate=True, dtype="float64")) == exact
    on_device = roles_of(_npu_plan(), emulate=False)[0]
    assert rank_host_bytes(_npu_plan(), on_device, TrainConfig()) == SPAWNED_RANK_BYTES


def test_memory_beyond_the_host_is_refused_naming_both_figures_and_the_fix() -> None:
    plan = cpu_test_plan()
    roles = roles_of(plan, emulate=True)
    config = TrainConfig(emulate=True)
    assert fit_problems(plan, roles, config, ROOMY) == []
    small = dataclasses.replace(ROOMY, memory_available_bytes=GIB // 4)
    (problem,) = fit_problems(plan, roles, config, small)
    need = (SPAWNED_RANK_BYTES + sum(rank_host_bytes(plan, r, config) for r in roles)) / GIB
    assert f"the plan's 4 ranks need about {need:,.1f} GiB of this host's memory" in problem
    assert "this host has 0.2 GiB available" in problem
    assert "polychip plan examples/clusters/cpu-test.yaml --model tiny" in problem


def test_ranks_beyond_the_hosts_cores_and_devices_are_refused() -> None:
    plan, config = cpu_test_plan(), TrainConfig()
    chips = roles_of(plan, emulate=False)  # CPU chips, measured: a core each
    (problem,) = fit_problems(plan, chips, config, dataclasses.replace(ROOMY, cores=2))
    assert "4 ranks as CPU chips (one thread each), this host has 2 cores" in problem
    assert "--emulate" in problem
    assert fit_problems(plan, chips, config, dataclasses.replace(ROOMY, cores=4)) == []
    emulated = roles_of(plan, emulate=True)  # the dilation makes room: cores are shared
    assert fit_problems(plan, emulated, config, dataclasses.replace(ROOMY, cores=2)) == []
    npu = roles_of(_npu_plan(), emulate=False)
    (problem,) = fit_problems(_npu_plan(), npu, config,
                              dataclasses.replace(ROOMY, devices={"npu": 1}))
    assert "the plan puts 2 ranks on npu devices, this host has 1" in problem
    assert fit_problems(_npu_plan(), npu, config,
                        dataclasses.replace(ROOMY, devices={"npu": 2})) == []


def test_train_refuses_a_plan_too_large_for_the_host_before_starting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The README tour's mistake: a 70B plan trained on a laptop."""
    def launched(*args: object, **kwargs: object) -> None:
        raise AssertionError("a process was started")
    monkeypatch.setattr(launch, "launch_local", launched)
    monkeypatch.setattr(hostfit, "this_host", lambda kinds=(): Host(
        cores=8, memory_available_bytes=16 * GIB, devices={}))
    plan = cpu_test_plan((2, 2, 2, 2), micro_batch=1, model=PRESETS["llama3-70b"],
                         seq_len=16)
    path, text = tmp_path / "plan.json", tmp_path / "text.txt"
    save_plan(plan, path)
    text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    assert main(["train", str(path), "--emulate", "--data", str(text)]) == 2
    err = capsys.readouterr().err
    assert "does not fit this host" in err and "this host has 16.0 GiB available" in err
    config = TrainConfig(emulate=True)
    largest = max(rank_host_bytes(plan, r, config) for r in roles_of(plan, emulate=True))
    assert largest > 70e9 * 16  # the whole model on each rank: float32 weights, grads, m, v
    assert f"the largest rank {largest / GIB:,.1f} GiB" in err
