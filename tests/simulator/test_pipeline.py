"""Pipeline schedules against their closed forms, with communication made free and
compute durations injected (`FixedTimes`), so the expected figures are exact."""

from __future__ import annotations

import pytest

from polychip.costmodel import CostModel
from polychip.plan import Plan, Replica, Stage
from polychip.simulator import simulate
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

from .plans import FixedTimes, free_comm_cluster, make_plan

EXACT = 1e-9  # relative: free communication still moves bytes at 1e12 Gbit/s


def uneven(layers: list[int], micro_batches: int, schedule: str = "1f1b", v: int = 1) -> Plan:
    """One chip per stage, `layers[i]` layers (so seconds) on stage i, free communication."""
    spec = ModelSpec("x", sum(layers), 64, 4, 2, 176, 256)
    stages, start = [], 0
    for si, n in enumerate(layers):
        stages.append(Stage(start, start + n, si, (0,), "h800"))
        start += n
    job = TrainingJob(micro_batches, 128)
    reps = (Replica(tuple(stages), micro_batches, 1),)
    return Plan(free_comm_cluster(len(layers)), spec, job, reps, schedule, v)


@pytest.mark.parametrize("kind", ["1f1b", "gpipe"])
@pytest.mark.parametrize(("S", "M"), [(1, 1), (1, 4), (2, 1), (2, 5), (4, 4), (4, 8), (8, 3)])
def test_balanced_pipeline_takes_m_plus_s_minus_1_slots(kind, S, M):
    plan = uneven([1] * S, M, kind)
    result = simulate(plan, cost_model=FixedTimes(plan, 1.0, 2.0))  # t_f + t_b = 3 s
    assert result.step_time_s == pytest.approx((M + S - 1) * 3.0, rel=EXACT)
    expected = [min(S - i, M) for i in range(S)] if kind == "1f1b" else [M] * S
    assert [st.peak_in_flight for st in result.stages] == expected
    assert result.bubble_fraction == pytest.approx((S - 1) / (M + S - 1), rel=1e-6)


@pytest.mark.parametrize(("S", "M"), [(4, 8), (3, 5), (6, 12)])
@pytest.mark.parametrize("extra", [1, 4])
def test_a_slow_stage_moves_gpipe_by_the_closed_form_anywhere(S, M, extra):
    for k in range(S):
        layers = [2] * S
        layers[k] += extra
        plan = uneven(layers, M, "gpipe")
        t = [3.0 * n for n in layers]
        sim = simulate(plan, cost_model=FixedTimes(plan)).step_time_s
        assert sim == pytest.approx(sum(t) + (M - 1) * max(t), rel=EXACT)


@pytest.mark.parametrize(("S", "M"), [(4, 8), (3, 5), (6, 12)])
@pytest.mark.parametrize("extra", [1, 2, 4])
def test_a_slow_stage_moves_1f1b_by_the_closed_form_when_it_is_last(S, M, extra):
    base = uneven([2] * S, M)
    layers = [2] * (S - 1) + [2 + extra]
    slow = uneven(layers, M)
    before = simulate(base, cost_model=FixedTimes(base)).step_time_s
    after = simulate(slow, cost_model=FixedTimes(slow)).step_time_s
    assert after - before == pytest.approx(M * 3.0 * extra, rel=EXACT)  # (M - 1) + 1 times Δ


@pytest.mark.parametrize(("S", "M"), [(4, 8), (3, 5), (6, 12)])
@pytest.mark.parametrize("extra", [1, 2, 4])
def test_1f1b_beats_the_closed_form_when_the_slow_stage_comes_first(S, M, extra):
    """Where the closed form and the simulation differ, and why: the closed form adds the
    whole fill and drain (every stage's time) to (M - 1) x the bottleneck. Under 1F1B a
    slow first stage runs its S - 1 warm-up forwards while the first micro-batch makes its
    round trip through the rest of the pipeline, so only what is left of that trip is
    idle: step = M t0 + max(0, sum of the other stages - (S - 1) t_f0)."""
    layers = [2 + extra] + [2] * (S - 1)
    plan = uneven(layers, M)
    sim = simulate(plan, cost_model=FixedTimes(plan, 1.0, 2.0)).step_time_s
    t0, tf0, rest = 3.0 * layers[0], 1.0 * layers[0], 6.0 * (S - 1)
    assert sim == pytest.approx(M * t0 + max(0.0, rest - (S - 1) * tf0), rel=EXACT)
    closed = t0 + rest + (M - 1) * t0
    assert sim <= closed


@pytest.mark.parametrize(("S", "v", "M"), [(2, 2, 4), (4, 2, 8), (4, 4, 8), (2, 4, 6), (8, 2, 16)])
def test_interleaved_shrinks_the_bubble_by_the_number_of_chunks(S, v, M):
    plan = uneven([v] * S, M, "interleaved-1f1b", v)  # one layer per chunk
    result = simulate(plan, cost_model=FixedTimes(plan, 1.0 / v, 2.0 / v))
    assert result.step_time_s == pytest.approx(M * 3.0 + (S - 1) * 3.0 / v, rel=EXACT)
    # Megatron's warm-up: 2 (S - i - 1) + (v - 1) S chunk-micro-batches, plus one
    held = [min(2 * (S - i - 1) + (v - 1) * S + 1, v * M) / v for i in range(S)]
    assert [st.peak_in_flight for st in result.stages] == held


@pytest.mark.parametrize("kind", ["1f1b", "gpipe"])
def test_peak_memory_is_the_cost_models_under_the_closed_form_count(kind):
    plan = make_plan(
        free_comm_cluster(4), [[(8, s, 1) for s in range(4)]], model="llama2-7b", schedule=kind
    )
    result = simulate(plan)
    cm = CostModel(plan.cluster, plan.model, plan.job)
    for st in result.stages:
        expected = cm.memory_of(plan.replicas[0], st.stage, kind, 1).total
        assert st.peak_memory_bytes == pytest.approx(expected, abs=8)


def test_every_schedule_finishes_for_many_shapes():
    """Deadlock-free by construction: no shape of 1F1B / GPipe / interleaved gets stuck."""
    for kind in ("1f1b", "gpipe"):
        for S in (1, 2, 3, 5):
            for M in (1, 2, 3, 7):
                plan = uneven([1] * S, M, kind)
                simulate(plan, cost_model=FixedTimes(plan))
    for S, v, M in ((1, 2, 3), (2, 2, 2), (3, 2, 9), (4, 4, 4), (3, 3, 6)):
        plan = uneven([v] * S, M, "interleaved-1f1b", v)
        simulate(plan, cost_model=FixedTimes(plan))
