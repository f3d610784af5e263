"""CostModel's pipeline: the closed form with stage and link times, 1F1B windows, schedules,
and transfers that block compute (DeepSpeed)."""

from __future__ import annotations

import pytest

from polychip.costmodel.compute import INTRA_NODE_LATENCY_S, StageTimes
from polychip.costmodel.estimate import CostModel
from polychip.costmodel.measured import BlockFigures, NoMeasurements
from polychip.costmodel.pipeline import interleaved_form
from polychip.plan.plan import Replica, Stage
from polychip.spec.job import TrainingJob

from .test_costmodel_estimate import TINY, _cluster, _cm

# ---- pipeline -----------------------------------------------------------------------------

# A chip so fast that links cost nothing next to the profiled blocks.
FAST = {"fast": {"vendor": "x", "peak_tflops_bf16": 1e12, "memory_gib": 1000,
                 "memory_gbps": 1e15, "intra_node_gbps": 1e15}}  # fmt: skip


class _Constant(NoMeasurements):
    """A profile measuring every block at (fwd, bwd) and the embedding and head at nothing."""

    def __init__(self, fwd: float, bwd: float) -> None:
        self.times = BlockFigures(fwd, bwd, recompute_bwd_s=None, activation_bytes=None)

    def block(self, chip: str, tp: int, micro_batch: int, seq_len: int):
        return self.times

    def embedding(self, chip: str, tp: int, micro_batch: int, seq_len: int):
        return StageTimes(0.0, 0.0)

    head = embedding


@pytest.mark.parametrize(("num_stages", "num_micro"), [(1, 1), (1, 8), (4, 8), (4, 1), (2, 32)])
def test_balanced_pipeline_is_m_plus_s_minus_one_stage_times(
    num_stages: int, num_micro: int
) -> None:
    f, b = 1e-3, 2e-3
    cluster = _cluster(("fast", 1, 100), chips=FAST)
    cm = _cm(cluster, batch=num_micro, profile=_Constant(f, b))
    per = TINY.num_layers // num_stages
    stages = tuple(
        Stage(i * per, (i + 1) * per, 0, (i,), "fast") for i in range(num_stages)
    )  # fmt: skip
    rep = Replica(stages, num_micro, 1)
    span, busy = cm.pipeline_time_s(rep, "1f1b")
    # Only the link latency c (5 us inside a node) is left of the communication: fill and
    # drain cross each of the S - 1 boundaries twice (activation, then its gradient). Under
    # 1F1B stage S - w holds w micro-batches while its round trip w t + 2 (w - 1) c runs, so
    # once M > w each micro-batch adds t + 2 (w - 1) c / w (tests/simulator: it agrees).
    t, c = per * (f + b), INTRA_NODE_LATENCY_S
    link = 2 * (num_stages - 1) * c
    windows = range(1, min(num_micro - 1, num_stages) + 1)  # those with M > w
    beat = t + max((2 * (w - 1) * c / w for w in windows), default=0.0)
    assert span == pytest.approx(num_stages * t + link + (num_micro - 1) * beat, rel=1e-9)
    assert cm.pipeline_time_s(rep, "gpipe")[0] == pytest.approx(
        (num_micro + num_stages - 1) * t + link, rel=1e-9)
    cost = cm.evaluate((rep,))
    # The bubble of 1F1B: (S - 1) / (M + S - 1).
    bubble = (num_stages - 1) / (num_micro + num_stages - 1)
    assert cost.bubble_fraction == pytest.approx(bubble, abs=2e-3)
    assert busy == pytest.approx(num_micro * num_stages * per * (f + b), rel=1e-6)


def test_slow_link_becomes_the_pipeline_bottleneck() -> None:
    f, b = 1e-3, 2e-3
    # Two nodes of one chip type on a 0.01 Gbit/s network: one activation of
    # 2 x 128 x 64 bytes takes 13 ms, far more than a stage's 6 ms of compute.
    cluster = _cluster(("fast", 2, 0.01), chips=FAST)
    cm = _cm(cluster, batch=8, profile=_Constant(f, b))
    rep = Replica((Stage(0, 2, 0, (0,), "fast"), Stage(2, 4, 1, (0,), "fast")), 8, 1)
    comm = 2 * 128 * 64 / (0.01e9 / 8) + 10e-6
    assert cm.boundary_time_s(rep, 0) == pytest.approx(comm)
    # Fill and drain cross the link twice (activation, then gradient). GPipe's steady state
    # runs at the link's pace; under 1F1B the first stage holds only 2 micro-batches during
    # a round trip of both stages and both transfers: (2 t + 2 comm) / 2 each.
    t = 2 * (f + b)
    fill = 2 * t + 2 * comm
    assert cm.pipeline_time_s(rep, "gpipe")[0] == pytest.approx(fill + 7 * comm, rel=1e-6)
    assert cm.pipeline_time_s(rep, "1f1b")[0] == pytest.approx(fill + 7 * (t + comm), rel=1e-6)


def test_slowest_stage_sets_the_steady_state() -> None:
    cm = _cm(_cluster(("h800", 1, 400), ("910b", 1, 400)), batch=16)
    fast = Replica((Stage(0, 2, 0, (0,), "h800"), Stage(2, 4, 0, (1,), "h800")), 16, 1)
    mixed = Replica((Stage(0, 2, 0, (0,), "h800"), Stage(2, 4, 1, (0,), "ascend-910b")), 16, 1)
    t_fast, _ = cm.pipeline_time_s(fast, "1f1b")
    t_mixed, _ = cm.pipeline_time_s(mixed, "1f1b")
    slow = cm.times_of(mixed, 1).total_s
    assert t_mixed > t_fast
    assert t_mixed >= 15 * slow  # (M - 1) x the slowest stage at least

def test_schedule_changes_memory_and_the_window_and_crossings_it_pays() -> None:
    cm = _cm(_cluster(("h800", 1, 400)), batch=16, profile=_Constant(1e-6, 2e-6))
    rep = Replica((Stage(0, 2, 0, (0,), "h800"), Stage(2, 4, 0, (1,), "h800")), 16, 1)
    f1b, gpipe = cm.evaluate((rep,)), cm.evaluate((rep,), schedule="gpipe")
    inter = cm.evaluate((rep,), schedule="interleaved-1f1b", virtual_stages=2)
    # interleaving: its own form, twice the crossings of the 5 us link (and the wrap-around)
    t = [cm.times_of(rep, i).total_s for i in range(2)]
    c = cm.boundary_time_s(rep, 0)
    form = interleaved_form(t, [c], 2, cm.wrap_time_s(rep))
    assert inter.pipeline_s == pytest.approx(form.span_s(16), rel=1e-12)
    assert inter.pipeline_s > f1b.pipeline_s  # microsecond stages: the links dominate
    # tiny stages (microseconds) beside a 5 us link latency: 1F1B's window of 2 micro-batches
    # exposes the round trip, GPipe (every micro-batch in flight) does not
    assert (t[0] + t[1] + 2 * c) / 2 > max(*t, c)
    assert f1b.pipeline_s - gpipe.pipeline_s == pytest.approx(
        15 * ((t[0] + t[1] + 2 * c) / 2 - max(*t, c)), rel=1e-9)
    act = [cost.memory[(0, 0)].activations for cost in (f1b, inter, gpipe)]
    assert act[0] < act[1] < act[2]  # 2, then ceil((2 + 2 + 1) / 2) = 3, then all 16
    assert act[2] == 8 * act[0]


def test_blocking_transfers_add_to_every_stage_as_deepspeed_runs_them() -> None:
    f, b = 1e-3, 2e-3
    cluster = _cluster(("fast", 2, 1.0), chips=FAST)  # 1 Gbit/s between the two nodes
    rep = Replica((Stage(0, 2, 0, (0,), "fast"), Stage(2, 4, 1, (0,), "fast")), 8, 1)
    overlapped = _cm(cluster, profile=_Constant(f, b))
    blocking = CostModel(cluster, TINY, TrainingJob(global_batch=8, seq_len=128,
                                                    overlap_p2p=False), _Constant(f, b))
    c = overlapped.boundary_time_s(rep, 0)
    assert c == blocking.boundary_time_s(rep, 0) > 1e-4
    # GPipe: each of the 7 further micro-batches waits for a stage's own four transfers.
    gap = blocking.pipeline_time_s(rep, "gpipe")[0] - overlapped.pipeline_time_s(rep, "gpipe")[0]
    assert gap == pytest.approx(7 * 2 * c)
    assert blocking.evaluate((rep,), "gpipe").step_time_s > overlapped.evaluate(
        (rep,), "gpipe").step_time_s
