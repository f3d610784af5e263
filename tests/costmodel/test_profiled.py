"""Measured profiles in the cost model: exact at measured points, linear between them (in
tokens and in 1/tp), analytic outside, and every figure labelled measured or analytic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.spec.profile_data import tiny_profile, write

from polychip.costmodel import CostModel, ProfileSet
from polychip.costmodel.compute import block_times
from polychip.costmodel.interpolate import at_point, hockney_fit
from polychip.costmodel.measured import tp_collectives
from polychip.costmodel.memory import RESERVE_FIXED_BYTES, RESERVE_FRACTION
from polychip.plan.plan import Plan, Replica, Stage
from polychip.plan.segments import grad_segments
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.errors import SpecError
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model
from polychip.spec.profile import PassPoint
from polychip.spec.profile_file import load_profile

TINY = load_model("tiny")
JOB = TrainingJob(global_batch=8, seq_len=128)
CLUSTER = cluster_from_dict({"name": "two", "nodes": [
    {"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10},
    {"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10}]})


def _cm(tmp_path: Path, data: dict | None = None, job: TrainingJob = JOB) -> CostModel:
    profile = load_profile(write(tmp_path, data or tiny_profile()))
    return CostModel(CLUSTER, TINY, job, ProfileSet.for_job([profile], CLUSTER, TINY, job))


def _fwd(p: PassPoint) -> tuple[float | None, ...]:
    return (p.fwd_s,)


def _pt(tp: int, mb: int, seq: int, fwd: float) -> PassPoint:
    return PassPoint(tp, mb, seq, fwd, 2 * fwd)


def test_interpolation_is_exact_at_points_linear_between_and_none_outside() -> None:
    pts = [_pt(1, 1, 128, 1.0), _pt(1, 4, 128, 4.0), _pt(4, 1, 128, 0.4), _pt(4, 4, 128, 1.0)]
    assert at_point(pts, 1, 4, 128, _fwd) == (4.0,)
    assert at_point(pts, 1, 2, 128, _fwd) == pytest.approx((2.0,))  # tokens 256 of 128..512
    # tp 2 between 1 and 4, linear in 1/tp: 1/2 is 2/3 of the way from 1 to 1/4
    assert at_point(pts, 2, 1, 128, _fwd) == pytest.approx((1.0 + 2 / 3 * (0.4 - 1.0),))
    assert at_point(pts, 1, 8, 128, _fwd) is None  # more tokens than measured
    assert at_point(pts, 8, 1, 128, _fwd) is None  # a TP degree beyond the measured ones


def test_points_of_the_same_sequence_length_are_preferred() -> None:
    # 512 tokens as 4 x 128 and as 1 x 512 (attention costs more per token at 512)
    pts = [_pt(1, 1, 128, 1.0), _pt(1, 4, 128, 4.0), _pt(1, 1, 512, 6.0), _pt(1, 2, 512, 12.0)]
    assert at_point(pts, 1, 4, 128, _fwd) == (4.0,)
    assert at_point(pts, 1, 1, 512, _fwd) == (6.0,)
    # 3 x 256 = 768 tokens: no point at 256, so all points; 768 lies between 512 and 1024
    assert at_point(pts, 1, 3, 256, _fwd) == pytest.approx((((4.0 + 6.0) / 2 + 12.0) / 2,))


def test_hockney_fit_recovers_bandwidth_and_latency() -> None:
    bw, lat = 2e9, 30e-6
    fit = hockney_fit([(n, lat + n / bw) for n in (1e3, 1e5, 1e7)])
    assert fit == pytest.approx((bw, lat))
    assert hockney_fit([(1e3, 1e-5)]) is None


def test_measured_points_replace_the_analytic_stage_times(tmp_path: Path) -> None:
    cm = _cm(tmp_path)
    fast = cm.chip("cpu-fast")
    mid = cm.stage_times(fast, 3, 1, 1, False, False, False)
    assert (mid.fwd_s, mid.bwd_s) == pytest.approx((0.030, 0.060))
    rec = cm.stage_times(fast, 3, 1, 1, False, False, True)  # the measured recompute backward
    assert rec.bwd_s == pytest.approx(3 * 0.031)
    both = cm.stage_times(fast, 1, 1, 4, True, True, False)  # block + embedding + head, mb 4
    assert both.fwd_s == pytest.approx(0.040 + 0.004 + 0.012)
    between = cm.stage_times(fast, 1, 1, 2, False, False, False)  # 256 tokens: a third of
    assert between.fwd_s == pytest.approx(0.010 + (0.040 - 0.010) / 3)  # the way to 512


def test_a_measured_tp_block_adds_its_measured_collectives(tmp_path: Path) -> None:
    cm = _cm(tmp_path, job=TrainingJob(global_batch=8, seq_len=128, sequence_parallel=False))
    fast = cm.chip("cpu-fast")
    fwd, bwd = tp_collectives(TINY, cm.job, 1, 2)
    msg = fwd[0][1]  # 128 tokens x 64 x 2 bytes = 16384 bytes, inside 1 kB .. 1 MB
    assert [op for op, _ in fwd] == [op for op, _ in bwd] == ["all-reduce"] * 2
    assert msg == 16384
    ar = 1e-4 + (msg - 1e3) / (1e6 - 1e3) * (1e-3 - 1e-4)
    t = cm.stage_times(fast, 1, 2, 1, False, False, False)
    assert (t.fwd_s, t.bwd_s) == pytest.approx((0.006 + 2 * ar, 0.012 + 2 * ar))


def test_outside_the_profile_the_analytic_figures_stand(tmp_path: Path) -> None:
    cm = _cm(tmp_path)
    analytic = CostModel(CLUSTER, TINY, JOB)
    for chip, mb in (("cpu-fast", 8), ("cpu-slow", 1)):  # beyond the points; no profile
        got = cm.stage_times(cm.chip(chip), 2, 1, mb, True, False, False)
        assert got == analytic.stage_times(analytic.chip(chip), 2, 1, mb, True, False, False)
    slow = cm.chip("cpu-slow")
    assert cm.stage_times(slow, 1, 1, 1, False, False, False).fwd_s == pytest.approx(
        block_times(slow, TINY, JOB, 1, 1).fwd_s)


def test_memory_optimizer_and_p2p_use_their_measurements(tmp_path: Path) -> None:
    cm, analytic = _cm(tmp_path), CostModel(CLUSTER, TINY, JOB)
    rep = Replica((Stage(0, 2, 0, (0,), "cpu-fast"), Stage(2, 4, 0, (1,), "cpu-fast")), 8, 1)
    base = analytic.stage_memory_at(rep, 0, 0, 1)
    mem = cm.stage_memory_at(rep, 0, 2, 1)  # 2 micro-batches x 2 blocks x 100 kB measured,
    ids = 128 * 8  # + the int64 token ids the embedding keeps (analytic: not in the profile)
    assert mem.activations == base.activations + 2 * (2 * 100_000 + ids)
    assert mem.weights == base.weights
    params = 2 * TINY.layer_params + TINY.embedding_params
    assert cm.stage_optimizer_time_s(rep, 0, 1) == pytest.approx(params * 2e-9)
    bw, lat = hockney_fit([(1e3, 2e-5), (1e6, 1e-4)])  # the profile's two p2p points
    assert cm.link(0, 0)[1:] == pytest.approx((bw, lat))
    assert cm.link(1, 1) == analytic.link(1, 1)  # cpu-slow: not profiled


def test_corrections_scale_their_phase(tmp_path: Path) -> None:
    data = tiny_profile()
    data["corrections"] = {"compute": 2.0, "optimizer": 3.0, "p2p": 4.0}
    (tmp_path / "plain").mkdir()
    cm, plain = _cm(tmp_path, data), _cm(tmp_path / "plain", tiny_profile())
    fast = cm.chip("cpu-fast")
    got, want = (m.stage_times(fast, 2, 1, 1, True, True, False) for m in (cm, plain))
    assert (got.fwd_s, got.bwd_s) == pytest.approx((2 * want.fwd_s, 2 * want.bwd_s))
    rep = Replica((Stage(0, 4, 0, (0,), "cpu-fast"),), 8, 1)
    assert cm.stage_optimizer_time_s(rep, 0, 1) == pytest.approx(
        3 * plain.stage_optimizer_time_s(rep, 0, 1))
    assert cm.link(0, 0)[1] == pytest.approx(plain.link(0, 0)[1] / 4)


def test_the_estimate_says_which_figures_were_measured(tmp_path: Path) -> None:
    cm = _cm(tmp_path)
    fast_pipe = Replica((Stage(0, 2, 0, (0,), "cpu-fast"), Stage(2, 4, 0, (1,), "cpu-fast")), 4, 1)
    slow = Replica((Stage(0, 4, 1, (0, 1), "cpu-slow"),), 4, 4)
    est = cm.evaluate((fast_pipe,)).to_estimate((fast_pipe,), cm)
    assert est.sources == {"block": "measured", "embedding": "measured", "head": "measured",
                           "activation_memory": "measured", "optimizer": "measured",
                           "p2p": "measured", "host": "analytic", "memory_reserve": "analytic"}
    both = (fast_pipe, slow)
    est = cm.evaluate(both).to_estimate(both, cm)
    assert est.sources["block"] == "mixed" and est.sources["tp_collectives"] == "analytic"
    assert est.sources["grad_sync"] == "analytic"
    plain = CostModel(CLUSTER, TINY, JOB)
    assert set(plain.evaluate(both).to_estimate(both, plain).sources.values()) == {"analytic"}
    assert sum(est.phases_s.values()) == pytest.approx(est.step_time_s)


def test_a_profile_of_a_chip_the_cluster_lacks_is_refused(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, tiny_profile(chip="h100")))
    with pytest.raises(SpecError, match=r"chip: 'h100' is no chip type of cluster 'two'"):
        ProfileSet.for_job([profile], CLUSTER, TINY, JOB)


def _with(**changes: Any) -> dict:
    data = tiny_profile()
    data.update(changes)
    return data


HOST = {"step_s": 1e-4, "micro_batches": [{"micro_batch": 1, "seq_len": 128, "seconds": 2e-4},
                                           {"micro_batch": 4, "seq_len": 128, "seconds": 5e-4}]}


def test_host_work_is_priced_per_micro_batch_and_per_step(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    cm, plain = _cm(tmp_path, _with(host=HOST)), _cm(tmp_path / "plain", tiny_profile())
    fast = cm.chip("cpu-fast")
    assert cm.host_times(fast, 1) == (2e-4, 1e-4)
    assert cm.host_times(fast, 2)[0] == pytest.approx(2e-4 + (5e-4 - 2e-4) / 3)  # 256 tokens
    assert cm.host_times(fast, 8) == (0.0, 0.0)  # beyond the points: none (analytic)
    assert plain.host_times(fast, 1) == (0.0, 0.0)
    rep = Replica((Stage(0, 2, 0, (0,), "cpu-fast"), Stage(2, 4, 0, (1,), "cpu-fast")), 8, 1)
    got, base = cm.evaluate((rep,)), plain.evaluate((rep,))
    # every stage's micro-batch takes its host work longer: fill and drain (S) and the beat
    # (M - 1) each pass it once; then the per-step part
    assert got.step_time_s - base.step_time_s == pytest.approx((2 + 8 - 1) * 2e-4 + 1e-4)
    assert got.compute_s == base.compute_s and got.idle_s == pytest.approx(8 * 2e-4 + 1e-4)
    est = got.to_estimate((rep,), cm)
    assert est.phases_s["idle_s"] == got.idle_s and est.sources["host"] == "measured"
    assert sum(est.phases_s.values()) == pytest.approx(est.step_time_s)


def test_a_measured_fixed_memory_replaces_the_reserve_s_fixed_part(tmp_path: Path) -> None:
    cm = _cm(tmp_path, _with(fixed_memory_bytes=300 * 2**20))
    analytic = CostModel(CLUSTER, TINY, JOB)
    fast, slow = cm.chip("cpu-fast"), cm.chip("cpu-slow")
    fragmentation = int(RESERVE_FRACTION * fast.memory_bytes)
    assert cm.reserve_bytes(fast) == 300 * 2**20 + fragmentation
    assert analytic.reserve_bytes(fast) == RESERVE_FIXED_BYTES + fragmentation
    assert cm.reserve_bytes(slow) == analytic.reserve_bytes(slow)  # not profiled
    rep = Replica((Stage(0, 4, 0, (0,), "cpu-fast"),), 8, 4)
    mem = cm.memory_of(rep, 0, "1f1b", 1)
    assert mem.reserve == cm.reserve_bytes(fast)
    assert mem.reserve - analytic.memory_of(rep, 0, "1f1b", 1).reserve == (
        300 * 2**20 - RESERVE_FIXED_BYTES)
    # what a run measures sees no reserve: the allocator's peak, or on the CPU the tensors
    assert mem.measured_basis_bytes("device-allocator") == mem.total - mem.reserve
    assert mem.measured_basis_bytes("cpu-tensors") == mem.total - mem.reserve - mem.transient
    assert cm.evaluate((rep,)).to_estimate((rep,), cm).sources["memory_reserve"] == "measured"


def test_the_grad_sync_correction_scales_the_gradient_sync(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    data = tiny_profile()
    data["corrections"]["grad_sync"] = 3.0
    cm, plain = _cm(tmp_path, data), _cm(tmp_path / "plain", tiny_profile())
    reps = tuple(Replica((Stage(0, 4, 0, (s,), "cpu-fast"),), 4, 4) for s in (0, 1))
    assert plain.dp_sync_time_s(reps) > 0
    assert cm.dp_sync_time_s(reps) == pytest.approx(3 * plain.dp_sync_time_s(reps))
    plan = Plan(CLUSTER, TINY, JOB, reps)
    for seg in grad_segments(plan):
        assert cm.segment_sync_time_s(reps, seg) == pytest.approx(
            3 * plain.segment_sync_time_s(reps, seg))
    # a sync with a chip of no correction runs at its slowest member's pace: the larger factor
    mixed = (reps[0], Replica((Stage(0, 4, 1, (0,), "cpu-slow"),), 4, 4))
    assert cm.dp_sync_time_s(mixed) == pytest.approx(3 * plain.dp_sync_time_s(mixed))
    assert cm.evaluate(reps).dp_sync_s == pytest.approx(cm.dp_sync_time_s(reps))


def test_a_data_parallel_sync_inside_a_profiled_node_takes_the_measured_collectives(
        tmp_path: Path) -> None:
    """Two single-stage replicas on one node of a profiled chip: each segment's all-reduce
    lasts what the profile measured for that tensor size (interpolated), labelled measured;
    the same replicas across two nodes keep the analytic figure."""
    cm = _cm(tmp_path)
    reps = tuple(Replica((Stage(0, 4, 0, (s,), "cpu-fast"),), 4, 4) for s in (0, 1))
    plan = Plan(CLUSTER, TINY, JOB, reps)

    def measured_s(n_bytes: float) -> float:  # the profile's two points, linear between
        return 1e-4 + (n_bytes - 1e3) / (1e6 - 1e3) * (1e-3 - 1e-4)

    segments = [seg for seg in grad_segments(plan)]
    want = sum(measured_s(JOB.reduce_bytes * seg.num_params(TINY)) for seg in segments)
    assert all(1e3 <= JOB.reduce_bytes * seg.num_params(TINY) <= 1e6 for seg in segments)
    assert cm.dp_sync_time_s(reps, overlap=False) == pytest.approx(want, rel=1e-9)
    for seg in segments:
        assert cm.segment_sync_time_s(reps, seg) == pytest.approx(
            measured_s(JOB.reduce_bytes * seg.num_params(TINY)), rel=1e-9)
    assert cm.evaluate(reps).to_estimate(reps, cm).sources["grad_sync"] == "measured"
    apart = (reps[0], Replica((Stage(0, 4, 1, (0,), "cpu-slow"),), 4, 4))
    assert cm.evaluate(apart).to_estimate(apart, cm).sources["grad_sync"] == "analytic"


def test_a_measured_optimizer_step_has_a_fixed_part_and_a_part_per_parameter(
        tmp_path: Path) -> None:
    data = tiny_profile()
    data["optimizer"] = {"seconds_per_param": 2e-9, "num_params": 200_000, "fixed_s": 3e-4}
    cm = _cm(tmp_path, data)
    rep = Replica((Stage(0, 4, 0, (0,), "cpu-fast"),), 4, 4)
    params = 4 * TINY.layer_params + TINY.embedding_params + TINY.head_params
    assert cm.stage_optimizer_time_s(rep, 0, 1) == pytest.approx(3e-4 + params * 2e-9)
    assert cm.stage_optimizer_time_s(rep, 0, 2) == pytest.approx(3e-4 + params / 2 * 2e-9)
    profile = load_profile(write(tmp_path, data))  # round trip through the file format
    assert profile.optimizer_fixed_s == 3e-4
