"""ZB-H1 replayed: B is the input gradient (backward less its weight-gradient part), W the
weight gradient; W waits for its own B only and nobody waits for W; W frees the activations;
the gradient all-reduce comes after the last W. Durations injected (`FixedTimes`), so the
expected figures are exact."""

from __future__ import annotations

import dataclasses

import pytest

from polychip.plan.schedule import Op, build_schedule
from polychip.simulator import picture_rows, simulate
from polychip.simulator.trace import trace_events

from .plans import FixedTimes, free_comm_cluster, make_plan
from .test_pipeline import EXACT, uneven


def zb(layers: list[int], M: int, f: float, b: float, w: float):
    """A zb-h1 plan and its cost model: per layer `f` forward, `b` input gradient, `w`
    weight gradient."""
    plan = uneven(layers, M, "zb-h1")
    return plan, FixedTimes(plan, f, b + w, w)


@pytest.mark.parametrize(("S", "M"), [(2, 4), (4, 4), (4, 8), (4, 16), (8, 8), (8, 32)])
@pytest.mark.parametrize(("f", "b", "w"), [(1.0, 1.0, 1.0), (1.0, 2.0, 1.0), (1.0, 1.0, 2.0),
                                           (1.0, 1.5, 0.5)])
def test_uniform_stages_close_the_bubble_to_s_minus_1_times_f_plus_b_minus_w(S, M, f, b, w):
    plan, cm = zb([1] * S, M, f, b, w)
    t = f + b + w
    got = simulate(plan, cost_model=cm).step_time_s
    # Qi et al.'s ZB-H1 bubble (S - 1)(F + B - W), at least (S - 1) F (when W > B the
    # later stages' deferred W's outlast the first stage's B chain)
    assert got == pytest.approx(M * t + (S - 1) * (f + max(b - w, 0.0)), rel=EXACT)
    one = dataclasses.replace(plan, schedule="1f1b")
    assert simulate(one, cost_model=cm).step_time_s == pytest.approx((M + S - 1) * t, rel=EXACT)


@pytest.mark.parametrize(("S", "M"), [(3, 1), (4, 2), (4, 4), (4, 9), (6, 3)])
def test_every_stage_holds_min_s_m_micro_batches_until_their_w(S, M):
    plan, cm = zb([1] * S, M, 1.0, 1.0, 1.0)
    result = simulate(plan, cost_model=cm)
    assert [st.peak_in_flight for st in result.stages] == [min(S, M)] * S
    for p in result.recording.programs:  # freed at the W, not at the B
        ws = [e for _, e, tok in p.spans if tok.startswith("W")]
        frees = [t for (t, k), (_, k0) in zip(p.mem[1:], p.mem[:-1], strict=True) if k < k0]
        assert frees == ws


def test_w_waits_for_its_own_b_and_nobody_waits_for_w():
    plan, cm = zb([1, 1, 1, 1], 6, 1.0, 1.0, 1.0)
    result = simulate(plan, cost_model=cm)
    for p in result.recording.programs:
        ends = {tok: e for _, e, tok in p.spans}
        starts = {tok: s for s, _, tok in p.spans}
        for m in range(6):
            assert starts[f"W{m}"] >= ends[f"B{m}"]
    # nobody waits for a W: every transfer leaves as its F or B ends
    progs = result.recording.programs
    for start, _, src, *_ in result.recording.transfers:
        sent_by = {e: tok[0] for _, e, tok in progs[src].spans}
        assert sent_by[start] in "FB"
    # the busy time counts every F, B and W: M (f + b + w) per stage
    assert all(st.compute_s == pytest.approx(6 * 3.0) for st in result.stages)


def test_the_all_reduce_starts_after_the_last_w():
    cl = free_comm_cluster(4)
    plan = make_plan(cl, [[(1, 0, 1), (1, 1, 1)], [(1, 2, 1), (1, 3, 1)]], micro_batches=4,
                     schedule="zb-h1")
    result = simulate(plan, cost_model=FixedTimes(plan, 1.0, 2.0, 1.0),
                      dedupe_replicas=False)
    sched = build_schedule(plan)
    for prog, p in zip(sched.programs, result.recording.programs, strict=True):
        ops = [a.op for a in prog.actions]
        last_w = max(i for i, op in enumerate(ops) if op is Op.WEIGHT)
        assert last_w < ops.index(Op.ALLREDUCE)
        assert p.pipeline_end == max(e for _, e, tok in p.spans if tok.startswith("W"))
    starts = [s for _, s, _ in result.recording.collectives]
    assert min(starts) >= min(p.pipeline_end for p in result.recording.programs)


def test_1f1b_keeps_the_whole_backward_in_b():
    plan = uneven([1, 1, 1], 4, "1f1b")
    result = simulate(plan, cost_model=FixedTimes(plan, 1.0, 2.0, 1.0))
    spans = [tok for p in result.recording.programs for _, _, tok in p.spans]
    assert not any(tok.startswith("W") for tok in spans)
    assert result.step_time_s == pytest.approx((4 + 2) * 3.0, rel=EXACT)


def test_the_picture_and_trace_show_w_as_its_own_kind():
    plan, cm = zb([1, 1], 3, 1.0, 1.0, 0.5)
    result = simulate(plan, cost_model=cm)
    kinds = {k for row in picture_rows.rows(result) for _, _, k in row.spans}
    assert {"F", "B", "W"} <= kinds
    assert picture_rows.KINDS["W"][1] not in {c for k, (_, c) in picture_rows.KINDS.items()
                                              if k != "W"}
    names = {e["name"] for e in trace_events(result) if e.get("cat") == "compute"}
    assert {"W0", "W2"} <= names


def test_zb_h1_replays_to_the_end_for_many_shapes():
    for S in (1, 2, 3, 5):
        for M in (1, 2, 3, 7):
            plan, cm = zb([1] * S, M, 1.0, 1.0, 0.5)
            assert simulate(plan, cost_model=cm).step_time_s > 0


@pytest.mark.parametrize(("S", "M", "w"), [(4, 8, 1.0), (4, 8, 0.4), (3, 2, 1.0), (6, 3, 0.7)])
def test_the_closed_forms_stage_ends_are_the_replays_last_ws(S, M, w):
    """The gradient sync may start once a stage's last W is done (gradsync.stage_ends):
    exact on uniform stages with W <= B (with W > B the input gradient waits behind the
    W's and the stages end closer together than the free chain says)."""
    from polychip.costmodel.gradsync import stage_ends

    plan, cm = zb([1] * S, M, 1.0, 1.0, w)
    result = simulate(plan, cost_model=cm)
    rep = plan.replicas[0]
    span = cm.pipeline_time_s(rep, "zb-h1")[0]
    assert span == pytest.approx(result.pipeline_s, rel=EXACT)
    ends = stage_ends(cm, rep, span, "zb-h1")
    assert ends == pytest.approx([st.pipeline_end_s for st in result.stages], rel=EXACT)
