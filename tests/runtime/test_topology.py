"""Plan -> rank roles, islands, devices; torchrun commands and the plan-rank mapping."""

from __future__ import annotations

import dataclasses

import pytest

from polychip.plan import build_schedule
from polychip.plan.segments import segment_pieces
from polychip.runtime.dilation import WarmupTiming, dilation_for, dilation_from
from polychip.runtime.emulate import phase_targets
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.launch import (
    hosts_for_nodes,
    node_ranks,
    plan_rank,
    torchrun_commands,
)
from polychip.runtime.topology import (
    check_devices,
    islands,
    rank_roles,
    world_backend,
)
from polychip.spec.model import PRESETS

from .plans import (
    MICRO,
    TINY4,
    cluster,
    cpu_test_plan,
    dp_plan,
    hybrid_plan,
    interleaved_plan,
)


def test_roles_of_an_uneven_plan() -> None:
    plan = cpu_test_plan((4, 4, 16, 8), micro_batch=4)
    roles = rank_roles(plan, emulate=True)
    assert [(r.rank, r.replica, r.chip) for r in roles] == [
        (0, 0, "cpu-slow"), (1, 1, "cpu-slow"), (2, 2, "cpu-fast"), (3, 3, "cpu-mid")]
    fast = roles[2]
    assert (fast.batch_share, fast.sample_start, fast.global_batch) == (16, 8, 32)
    assert (fast.micro_batch_size, fast.num_micro_batches) == (4, 4)
    assert fast.samples == range(8, 24)
    assert fast.micro_batch(3) == range(20, 24)
    assert (fast.layer_start, fast.layer_end) == (0, MICRO.num_layers)
    assert (fast.device_type, fast.backend, fast.emulated) == ("cpu", "gloo", True)
    assert fast.island == "cpu-b/gloo"
    assert islands(roles) == ((0, 1), (2,), (3,))
    assert world_backend(roles) == "gloo"


def test_shares_cover_the_global_batch_once() -> None:
    roles = rank_roles(cpu_test_plan((3, 5, 16, 8), micro_batch=1), emulate=True)
    covered = [i for r in roles for i in r.samples]
    assert covered == list(range(32))


NPU_CHIPS = {"fake-910": {"vendor": "acme", "device_type": "npu", "torch_backend": "hccl",
                          "collective_library": "hccl", "peak_tflops_bf16": 300,
                          "memory_gib": 64, "memory_gbps": 1600, "intra_node_gbps": 400}}


def _npu_plan():
    c = cluster([{"chip": "fake-910", "count": 1, "chips_per_node": 2, "nic_gbps": 100}],
                NPU_CHIPS)
    return dp_plan(c, [(0, 0, "fake-910", 2, 1), (0, 1, "fake-910", 2, 1)])


def test_missing_device_type_names_it_and_suggests_emulate() -> None:
    plan = _npu_plan()
    roles = rank_roles(plan, emulate=False)
    assert (roles[0].device_type, roles[0].backend) == ("npu", "hccl")
    assert world_backend(roles) == "cpu:gloo,npu:hccl"
    with pytest.raises(RuntimeSetupError, match=r"'npu'.*torch_npu.*--emulate"):
        check_devices(roles)
    emulated = rank_roles(plan, emulate=True)
    check_devices(emulated)  # the CPU plays the chips
    assert {(r.device_type, r.backend) for r in emulated} == {("cpu", "gloo")}


def test_roles_and_gradient_pieces_of_a_hybrid_plan() -> None:
    plan = hybrid_plan()
    roles = rank_roles(plan, emulate=True)
    assert [(r.replica, r.stage, r.tp_rank, r.layer_start, r.layer_end) for r in roles] == [
        (0, 0, 0, 0, 1), (0, 1, 0, 1, 4), (0, 1, 1, 1, 4), (1, 0, 0, 0, 4)]
    assert roles[2].stage_ranks == (1, 2) and not roles[2].is_leader
    assert roles[1].last_stage and not roles[0].last_stage and roles[3].first_stage
    assert islands(roles) == ((0, 3), (1, 2))
    pieces = segment_pieces(plan)
    assert list(pieces) == ["head", "1:4", "0:1", "emb"]
    # TP 2 meets TP 1: two pieces, the single slow chip takes part in both
    assert [(p.index, p.num, p.ranks) for p in pieces["head"]] == [(0, 2, (1, 3)),
                                                                   (1, 2, (2, 3))]
    assert [(p.num, p.ranks) for p in pieces["emb"]] == [(1, (0, 3))]


def test_interleaved_ranks_hold_the_chunks_the_schedule_runs() -> None:
    roles = rank_roles(interleaved_plan(), emulate=True)
    assert [r.chunks for r in roles] == [((0, 1), (2, 3)), ((1, 2), (3, 4)), ((1, 2), (3, 4)),
                                         ((0, 2), (2, 4))]
    pieces = segment_pieces(interleaved_plan())
    assert list(pieces) == ["head", "3:4", "2:3", "1:2", "0:1", "emb"]


@pytest.mark.parametrize("plan", [hybrid_plan(), interleaved_plan()], ids=["tp", "interleaved"])
def test_roles_schedule_and_plan_share_one_numbering_of_ranks(plan) -> None:
    roles = rank_roles(plan, emulate=True)
    assert tuple(r.info for r in roles) == plan.ranks()
    stage_ranks = plan.stage_rank_map()
    for role in roles:
        assert role.stage_ranks == stage_ranks[(role.replica, role.stage)]
        assert build_schedule(plan).program_of(role.rank).ranks == role.stage_ranks


def test_what_the_runtime_cannot_run_yet_is_refused_not_faked() -> None:
    plan = hybrid_plan()
    tied = dataclasses.replace(plan, model=dataclasses.replace(TINY4, tie_embeddings=True))
    with pytest.raises(RuntimeSetupError, match=r"model.tie_embeddings = true: not executed.*"
                                                r"plan one stage per replica"):
        rank_roles(tied, emulate=True)
    odd = dataclasses.replace(plan, model=dataclasses.replace(TINY4, num_kv_heads=1))
    with pytest.raises(RuntimeSetupError, match="degree 2 does not divide the model's "
                                                "num_kv_heads=1"):
        rank_roles(odd, emulate=True)


def test_phase_targets_follow_chip_speed() -> None:
    # The tiny model at 128 tokens: its GEMMs are compute-bound on these chips and follow peak
    # FLOP/s (1 : 2 : 4); its kernel launches and memory-bound kernels cost the same on all
    # three (one device type, one memory bandwidth). So slow - mid = 2 (mid - fast).
    plan = cpu_test_plan((4, 4, 16, 8), micro_batch=4, model=PRESETS["tiny"], seq_len=128)
    slow, fast, mid = (phase_targets(plan, r, 0).micro_batch_s for r in (0, 2, 3))
    assert slow > mid > fast
    assert slow - mid == pytest.approx(2 * (mid - fast), rel=1e-3)
    assert phase_targets(plan, 0, 0).optimizer_s > 0


def test_dilation_rounds_up_to_two_digits() -> None:
    assert dilation_for(10.0, margin=1.5) == 15.0
    assert dilation_for(12.34, margin=1.5) == 19.0
    assert dilation_for(0.3, margin=1.5) == 0.45
    with pytest.raises(RuntimeSetupError):
        dilation_for(0.0)


def _timing(host: str, compute_s: float, target_s: float, step_s: float,
            busy_s: float = 0.0) -> WarmupTiming:
    return WarmupTiming(host, cores=2, compute_s=compute_s, busy_compute_s=busy_s or compute_s,
                        compute_target_s=target_s, optimizer_s=0.001,
                        optimizer_target_s=0.001, step_target_s=step_s)


def test_dilation_fits_each_rank_and_each_hosts_cores() -> None:
    # Each rank alone needs 10x its chip's time: slots must be 10x, times the margin.
    balanced = [_timing("h", 0.1, 0.01, 0.011) for _ in range(2)]
    assert dilation_from(balanced, margin=2.0, busy_margin=1.0) == 20.0
    # A host busy with other jobs: the ranks' work timed together is 4x slower.
    loaded = [_timing("h", 0.1, 0.01, 0.011, busy_s=0.4) for _ in range(2)]
    assert dilation_from(loaded, margin=2.0, busy_margin=1.25) == 50.0
    # Six such ranks on one 2-core host: 0.606 s of work per 0.011 s chip step on 2 cores.
    crowded = [_timing("h", 0.1, 0.01, 0.011) for _ in range(6)]
    assert dilation_from(crowded, margin=1.0) == pytest.approx(28.0)
    # ... unless they are spread over three hosts.
    spread = [_timing(f"h{i // 2}", 0.1, 0.01, 0.011) for i in range(6)]
    assert dilation_from(spread, margin=1.0, busy_margin=1.0) == 10.0


# ---- torchrun commands ---------------------------------------------------------------------
def _two_node_plan():
    # Node 0 holds 2 cpu-slow chips, node 1 one cpu-fast. Replica order deliberately differs
    # from device order: plan rank 0 is device 1 of node 0, rank 1 is node 1, rank 2 device 0.
    c = cluster([{"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10},
                 {"chip": "cpu-fast", "count": 1, "chips_per_node": 1, "nic_gbps": 10}])
    return dp_plan(c, [(0, 1, "cpu-slow", 2, 1), (1, 0, "cpu-fast", 8, 4),
                       (0, 0, "cpu-slow", 2, 1)])


def test_local_rank_maps_to_plan_rank_by_device_slot() -> None:
    plan = _two_node_plan()
    assert node_ranks(plan, 0) == (2, 0)  # local rank 0 -> device 0 -> plan rank 2
    assert node_ranks(plan, 1) == (1,)
    assert [plan_rank(plan, 0, i) for i in (0, 1)] == [2, 0]
    with pytest.raises(RuntimeSetupError, match="--nproc-per-node=1"):
        plan_rank(plan, 1, 1)


def test_torchrun_commands_per_node() -> None:
    plan = _two_node_plan()
    cmds = torchrun_commands(plan, "plan.json", ["gpu-a", "npu-b"], port=29600,
                             train_args=["--steps", "5", "--emulate"])
    assert [c.line for c in cmds] == [
        "torchrun --nnodes=2 --nproc-per-node=2 --node-rank=0 --master-addr=gpu-a "
        "--master-port=29600 --max-restarts=0 -m polychip train plan.json --plan-node 0 "
        "--steps 5 --emulate",
        "torchrun --nnodes=2 --nproc-per-node=1 --node-rank=1 --master-addr=gpu-a "
        "--master-port=29600 --max-restarts=0 -m polychip train plan.json --plan-node 1 "
        "--steps 5 --emulate",
    ]
    assert [c.plan_ranks for c in cmds] == [(2, 0), (1,)]


def test_hosts_per_cluster_node_or_per_used_node() -> None:
    c = cluster([{"chip": "cpu-slow", "count": 3, "chips_per_node": 1, "nic_gbps": 10}])
    plan = dp_plan(c, [(0, 0, "cpu-slow", 2, 1), (2, 0, "cpu-slow", 2, 1)])  # node 1 unused
    assert hosts_for_nodes(plan, ["a", "b", "c"]) == {0: "a", 2: "c"}
    assert hosts_for_nodes(plan, ["a", "c"]) == {0: "a", 2: "c"}
    with pytest.raises(RuntimeSetupError, match=r"gives 1 hosts.*3 nodes.*uses 2"):
        hosts_for_nodes(plan, ["a"])


def test_segments_fuse_when_their_holders_match_and_params_find_their_segment() -> None:
    from polychip.plan import build_schedule
    from polychip.runtime.grad_layout import fused_runs, segment_of

    plan = hybrid_plan()
    groups = build_schedule(plan).groups
    # replica 1's single stage holds everything: head + 1:4 share holders, so do 0:1 + emb
    assert fused_runs(["head", "1:4", "0:1", "emb"], groups) == [["head", "1:4"],
                                                                  ["0:1", "emb"]]
    # same holders but not next to each other in the global order: never one collective
    assert fused_runs(["head", "0:1"], {"head": (0, 1), "1:4": (2, 1), "0:1": (0, 1)}) == [
        ["head"], ["0:1"]]
    segments = ["head", "1:4", "0:1", "emb"]
    assert segment_of("layers.3.attn.wq.weight", segments) == "1:4"
    assert segment_of("layers.0.mlp_norm.weight", segments) == "0:1"
    assert segment_of("final_norm.weight", segments) == "head"
    assert segment_of("embed.weight", ["head"]) == ""


def test_even_layer_split_keeps_devices_and_batches() -> None:
    from polychip.runtime.compare import even_layer_split

    plan = hybrid_plan()
    even = even_layer_split(plan)
    assert [(s.layer_start, s.layer_end, s.local_devices) for s in even.replicas[0].stages] == [
        (0, 2, (0,)), (2, 4, (0, 1))]
    assert even.replicas[1] == plan.replicas[1]
    assert even.estimate is not None
