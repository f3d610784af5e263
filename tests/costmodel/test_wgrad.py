"""The weight-gradient part of a backward (`StageTimes.wgrad_s`, the W of a zero-bubble
schedule): which kernels it is, and that recompute, profiles and corrections keep it
consistent with the backward it is part of."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.spec.profile_data import tiny_profile, write

from polychip.costmodel import CostModel, ProfileSet
from polychip.costmodel.blocks import Shard, block_forward
from polychip.costmodel.compute import block_times, embedding_times, head_times, op_s
from polychip.costmodel.ends import embedding_passes
from polychip.costmodel.ops import Collective, Gemm, backward_pass, gemm_flops, is_wgrad
from polychip.plan import Replica, Stage
from polychip.spec.accelerators import lookup
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model
from polychip.spec.profile_file import load_profile

LLAMA = load_model("llama2-7b")
GPT2M = load_model("gpt2-medium")
TINY = load_model("tiny")
H800 = lookup("h800")


def _names(ops) -> set[str]:
    return {getattr(op, "name", type(op).__name__) for op in ops if is_wgrad(op)}


def test_w_is_each_weight_gemms_operand_gradient_accumulation_and_bias() -> None:
    job = TrainingJob(global_batch=8, seq_len=1024)
    fwd = block_forward(Shard(GPT2M, job, 2, 1))
    bwd = backward_pass(fwd, job.compute_bytes, job.reduce_bytes)
    weights = [op.name for op in fwd if isinstance(op, Gemm) and op.weight]
    assert weights  # q k v o, fc1, fc2 (with biases)
    expected = {f"{n}.{part}" for n in weights for part in ("grad-operand", "grad-acc")}
    expected |= {f"{op.name}.bias-grad" for op in fwd if isinstance(op, Gemm) and op.bias}
    assert _names(bwd) == expected
    # the W GEMMs do exactly the weight GEMMs' forward FLOPs (one product each)
    forward_weights = [op for op in fwd if isinstance(op, Gemm) and op.weight]
    assert gemm_flops([op for op in bwd if is_wgrad(op)]) == pytest.approx(
        gemm_flops(forward_weights))


def test_an_activation_gemms_gradients_are_both_input_gradients() -> None:
    job = TrainingJob(global_batch=8, seq_len=512, attention="eager")
    bwd = backward_pass(block_forward(Shard(LLAMA, job, 1, 1)), 2, 4)
    assert not any(n.startswith(("attn.qk", "attn.pv")) for n in _names(bwd))


def test_sequence_parallel_regather_is_w_and_the_other_collectives_are_b() -> None:
    job = TrainingJob(global_batch=8, seq_len=1024)
    bwd = backward_pass(block_forward(Shard(LLAMA, job, 1, 4)), 2, 4)
    colls = [op for op in bwd if isinstance(op, Collective)]
    assert sum(op.wgrad for op in colls) == 2  # one re-gather per column-parallel pair
    assert sum(not op.wgrad for op in colls) == 4


def test_w_prices_exactly_its_kernels_and_is_part_of_the_backward() -> None:
    job = TrainingJob(global_batch=8, seq_len=2048)
    for tp in (1, 4):
        sh = Shard(LLAMA, job, 2, tp)
        bwd = backward_pass(block_forward(sh), 2, 4)
        t = block_times(H800, LLAMA, job, 2, tp)
        assert t.wgrad_s == pytest.approx(sum(op_s(H800, job, op, tp) for op in bwd
                                              if is_wgrad(op)))
        assert 0.2 * t.bwd_s < t.wgrad_s < 0.7 * t.bwd_s  # about half the GEMM work
        assert t.igrad_s == pytest.approx(t.bwd_s - t.wgrad_s)


def test_the_embeddings_table_scatter_is_w_and_the_loss_is_not() -> None:
    job = TrainingJob(global_batch=8, seq_len=1024)
    _, bwd = embedding_passes(Shard(GPT2M, job, 1, 1))
    assert _names(bwd) == {"embed.grad-table", "pos.grad-table"}
    emb = embedding_times(H800, GPT2M, job, 1, 1)
    assert emb.wgrad_s == pytest.approx(emb.bwd_s)  # nothing else in its backward
    head = head_times(H800, GPT2M, job, 1, 1)
    assert 0 < head.wgrad_s < head.bwd_s  # the head GEMM's operand gradient; not the loss


def test_stage_w_sums_blocks_and_ends_and_recompute_adds_to_b_only() -> None:
    cluster = cluster_from_dict({"nodes": [{"chip": "h800", "count": 1, "chips_per_node": 8,
                                            "nic_gbps": 400}]})
    cm = CostModel(cluster, LLAMA, TrainingJob(global_batch=8, seq_len=2048))
    block = cm.component_times("block", H800, 1, 1)
    emb, head = (cm.component_times(c, H800, 1, 1) for c in ("embedding", "head"))
    st = cm.stage_times(H800, 5, 1, 1, True, True, False)
    assert st.wgrad_s == pytest.approx(5 * block.wgrad_s + emb.wgrad_s + head.wgrad_s)
    redo = cm.stage_times(H800, 5, 1, 1, True, True, True)
    assert redo.wgrad_s == pytest.approx(st.wgrad_s)  # the re-forward belongs to B
    assert redo.igrad_s == pytest.approx(st.igrad_s + 5 * block.fwd_s)
    # split apart (zb-h1), W re-runs the checkpointed forward too (runtime/backward.py)
    split = redo.split_backward()
    assert split.igrad_s == pytest.approx(redo.igrad_s)
    assert split.wgrad_s == pytest.approx(st.wgrad_s + 5 * block.fwd_s)
    assert st.split_backward() == st  # nothing to re-run without recompute


def test_zb_h1_prices_the_second_re_forward_of_a_recomputed_stage() -> None:
    cluster = cluster_from_dict({"nodes": [{"chip": "h800", "count": 1, "chips_per_node": 8,
                                            "nic_gbps": 400}]})
    cm = CostModel(cluster, LLAMA, TrainingJob(global_batch=8, seq_len=2048))
    rep = Replica((Stage(0, 16, 0, (0,), "h800", recompute=True),
                   Stage(16, 32, 0, (1,), "h800")), 8, 1)
    one, zb = (cm.pipeline_time_s(rep, s)[1] for s in ("1f1b", "zb-h1"))
    redo = cm.times_of(rep, 0).redo_s
    assert redo > 0 and cm.times_of(rep, 1).redo_s == 0
    assert zb == pytest.approx(one + 8 * redo)  # busy time: one more forward per micro-batch


CPU = cluster_from_dict({"name": "two", "nodes": [
    {"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10}]})
JOB = TrainingJob(global_batch=8, seq_len=128)


def _profiled(tmp_path: Path, corrections: dict | None = None) -> CostModel:
    data = tiny_profile()
    if corrections:
        data["corrections"] = corrections
    profile = load_profile(write(tmp_path, data))
    return CostModel(CPU, TINY, JOB, ProfileSet.for_job([profile], CPU, TINY, JOB))


def test_a_measured_backward_is_split_in_the_analytic_share(tmp_path: Path) -> None:
    cm = _profiled(tmp_path)
    fast = cm.chip("cpu-fast")
    analytic = block_times(fast, TINY, JOB, 1, 1)
    measured = cm.component_times("block", fast, 1, 1)
    assert measured.bwd_s == pytest.approx(0.020)  # the profile's point (tiny_profile)
    assert measured.wgrad_s / measured.bwd_s == pytest.approx(
        analytic.wgrad_s / analytic.bwd_s)
    # measured recompute backward: W is the analytic share of (backward + re-forward)
    rec = cm.stage_times(fast, 1, 1, 1, False, False, True)
    share = analytic.wgrad_s / (analytic.bwd_s + analytic.fwd_s)
    assert rec.wgrad_s == pytest.approx(rec.bwd_s * share)


def test_a_compute_correction_scales_w_with_the_backward(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    cm, plain = _profiled(tmp_path, {"compute": 1.5}), _profiled(tmp_path / "plain")
    fast = cm.chip("cpu-fast")
    got, want = (m.stage_times(fast, 2, 1, 1, True, True, False) for m in (cm, plain))
    assert got.wgrad_s == pytest.approx(1.5 * want.wgrad_s) and want.wgrad_s > 0
