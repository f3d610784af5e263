"""The schedule: per-stage action lists, their text form, and the rules the runtime relies on."""

from __future__ import annotations

from collections import Counter

import pytest

from polychip.plan import (
    Action,
    Op,
    Plan,
    Replica,
    ScheduleTextError,
    Stage,
    build_schedule,
    chunk_layers,
    format_schedule,
    grad_segments,
    parse_schedule,
)
from polychip.plan.schedule import compute_order, zb_h1_order
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

CLUSTER = cluster_from_dict(
    {"nodes": [{"chip": "h800", "count": 4, "chips_per_node": 8, "nic_gbps": 400}]}
)


def plan_of(replicas, schedule="1f1b", v=1, model="tiny") -> Plan:
    """replicas: [(micro_batches, [(layer_start, layer_end, node, devices), ...]), ...]"""
    reps = tuple(
        Replica(tuple(Stage(a, b, n, tuple(d), "h800") for a, b, n, d in stages), m, 1)
        for m, stages in replicas
    )
    job = TrainingJob(sum(r.batch_size for r in reps), 128)
    return Plan(CLUSTER, load_model(model), job, reps, schedule, v)


TWO_STAGES = [(0, 2, 0, [0, 1]), (2, 4, 1, [0])]  # TP 2 then TP 1


@pytest.mark.parametrize("kind", ["1f1b", "gpipe"])
@pytest.mark.parametrize(("S", "M"), [(1, 1), (1, 3), (2, 1), (3, 2), (4, 4), (4, 7)])
def test_every_micro_batch_runs_forward_then_backward_once(kind, S, M):
    for p in range(S):
        order = compute_order(kind, p, S, M)
        assert sorted(m for f, m, _ in order if f) == list(range(M))
        assert sorted(m for f, m, _ in order if not f) == list(range(M))
        seen = set()
        for forward, m, _ in order:
            assert forward or m in seen  # no backward before its forward
            seen.add(m)


@pytest.mark.parametrize(("S", "M"), [(1, 4), (2, 4), (4, 2), (4, 8), (8, 3)])
def test_1f1b_holds_at_most_min_s_minus_i_m_micro_batches(S, M):
    for p in range(S):
        held = peak = 0
        for forward, _, _ in compute_order("1f1b", p, S, M):
            held += 1 if forward else -1
            peak = max(peak, held)
        assert peak == min(S - p, M)
        gpipe = compute_order("gpipe", p, S, M)
        assert [f for f, _, _ in gpipe] == [True] * M + [False] * M


@pytest.mark.parametrize(("S", "M"), [(1, 3), (2, 4), (4, 2), (4, 8), (8, 3), (5, 12)])
def test_zb_h1_splits_each_backward_and_holds_at_most_s_micro_batches(S, M):
    peaks = []
    for p in range(S):
        order = zb_h1_order(p, S, M)
        for op in (Op.FORWARD, Op.BACKWARD, Op.WEIGHT):
            assert sorted(m for o, m in order if o is op) == list(range(M))
        done: set[tuple[Op, int]] = set()
        held = peak = 0  # activations live from F until W
        for op, m in order:
            need = {Op.BACKWARD: Op.FORWARD, Op.WEIGHT: Op.BACKWARD}.get(op)
            assert need is None or (need, m) in done  # B after its F, W after its B
            done.add((op, m))
            held += {Op.FORWARD: 1, Op.WEIGHT: -1}.get(op, 0)
            peak = max(peak, held)
        peaks.append(peak)
        # B and F interleave exactly as 1F1B's backward and forward do
        one_f_one_b = [f for f, _, _ in compute_order("1f1b", p, S, M)]
        assert [o is Op.FORWARD for o, _ in order if o is not Op.WEIGHT] == one_f_one_b
    assert max(peaks) == min(S, M)  # the pipeline's peak is 1F1B's
    assert all(peak <= min(S, M) for peak in peaks)


def test_zb_h1_text_round_trips_with_weight_actions():
    plan = plan_of([(4, [(0, 2, 0, [0]), (2, 4, 1, [0])])], "zb-h1")
    sched = build_schedule(plan)
    assert parse_schedule(format_schedule(sched)) == sched
    last = [str(a) for a in sched.programs[1].actions]
    assert last[:4] == ["RA0<r0", "F0", "B0", "SG0>r0"]  # the last stage defers W0
    assert last.index("W0") > last.index("B1")


def test_tp_ranks_share_their_stage_program_and_only_leaders_talk():
    sched = build_schedule(plan_of([(3, TWO_STAGES)]))
    first, second = sched.programs
    assert first.ranks == (0, 1) and second.ranks == (2,)
    assert sched.actions_of(0) is sched.actions_of(1)  # one program, two ranks
    peers = {a.peer for prog in sched.programs for a in prog.actions if a.peer >= 0}
    assert peers == {0, 2}  # leaders only
    assert str(first.actions[0]) == "F0" and str(first.actions[1]) == "SA0>r2"
    with pytest.raises(KeyError):
        sched.program_of(9)


@pytest.mark.parametrize(
    ("kind", "v", "M"),
    [("1f1b", 1, 5), ("gpipe", 1, 3), ("interleaved-1f1b", 2, 4), ("zb-h1", 1, 6)],
)
def test_every_send_has_exactly_one_matching_receive(kind, v, M):
    stages = [(0, 1, 0, [0]), (1, 2, 1, [0]), (2, 3, 2, [0]), (3, 4, 3, [0])]
    if v > 1:
        stages = [(0, 2, 0, [0]), (2, 4, 1, [0])]
    sched = build_schedule(plan_of([(M, stages)], kind, v))
    sends, recvs = Counter(), Counter()
    for prog in sched.programs:
        for a in prog.actions:
            if a.op in (Op.SEND_ACT, Op.SEND_GRAD):
                sends[(prog.leader, a.peer, a.op is Op.SEND_ACT, a.micro)] += 1
            elif a.op in (Op.RECV_ACT, Op.RECV_GRAD):
                recvs[(a.peer, prog.leader, a.op is Op.RECV_ACT, a.micro)] += 1
    assert sends == recvs and sends


def test_text_form_round_trips_and_reads_like_the_docs():
    plan = plan_of([(3, TWO_STAGES), (1, [(0, 4, 2, [0])])])
    sched = build_schedule(plan)
    text = format_schedule(sched)
    assert parse_schedule(text) == sched
    lines = text.splitlines()
    assert lines[0] == "# polychip schedule 1f1b virtual_stages=1"
    assert lines[1].startswith("r0+r1 (R0 S0): F0 SA0>r2 F1 SA1>r2 RG0<r2 B0 ")
    assert lines[1].endswith("AR[0:2] AR[emb] OPT")
    assert lines[2].startswith("r2 (R0 S1): RA0<r0 F0 B0 SG0>r0 ")
    assert "AR[head]: r2 r3" in lines


def test_interleaved_text_round_trips_with_chunks():
    plan = plan_of([(4, [(0, 2, 0, [0]), (2, 4, 1, [0])])], "interleaved-1f1b", 2)
    sched = build_schedule(plan)
    assert sched.kind == "interleaved-1f1b" and sched.virtual_stages == 2
    text = format_schedule(sched)
    assert "F0.1" in text and "SA0.1>r1" in text  # chunk 1 of stage 0 feeds stage 1
    assert parse_schedule(text) == sched


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("r0 (R0 S0): F0", "line 1"),
        ("# polychip schedule 1f1b virtual_stages=1\nr0 (R0 S0): F0 X9", "line 2: 'X9'"),
        ("# polychip schedule 1f1b virtual_stages=1\nr0 (R0 S0): SA0<r1", "SEND_ACT takes"),
        ("# polychip schedule 1f1b virtual_stages=1\nr0 (R0 S0): F0>r1", "FORWARD takes no"),
        ("# polychip schedule 1f1b virtual_stages=1\nhello", "line 2"),
    ],
)
def test_parser_names_the_line_and_token(text, where):
    with pytest.raises(ScheduleTextError, match=where):
        parse_schedule(text)


def test_parse_action_tokens():
    assert (
        Action(Op.RECV_GRAD, 3, 1, 5)
        == parse_schedule("# polychip schedule x virtual_stages=2\nr0 (R0 S0): RG3.1<r5")
        .programs[0]
        .actions[0]
    )
    assert str(Action(Op.ALLREDUCE, segment="emb")) == "AR[emb]"


def test_segments_follow_the_holders_of_each_layer():
    # replica 0 cuts at layer 1, replica 1 at layer 3: segments [0:1], [1:3], [3:4]
    plan = plan_of([(2, [(0, 1, 0, [0]), (1, 4, 1, [0])]), (2, [(0, 3, 2, [0]), (3, 4, 3, [0])])])
    segs = {s.name: s.holders for s in grad_segments(plan)}
    assert list(segs) == ["head", "3:4", "1:3", "0:1", "emb"]  # the all-reduce order
    assert segs["1:3"] == ((0, 1), (1, 0))
    sched = build_schedule(plan)
    ars = [[a.segment for a in p.actions if a.op is Op.ALLREDUCE] for p in sched.programs]
    assert ars == [["0:1", "emb"], ["head", "3:4", "1:3"], ["1:3", "0:1", "emb"], ["head", "3:4"]]
    assert sched.groups["1:3"] == (1, 2)


def test_a_single_replica_has_no_allreduce():
    sched = build_schedule(plan_of([(2, TWO_STAGES)]))
    assert not sched.groups
    assert all(p.actions[-1] == Action(Op.OPTIMIZER) for p in sched.programs)


def test_only_the_named_replicas_are_built():
    sched = build_schedule(plan_of([(1, TWO_STAGES), (1, [(0, 4, 2, [0])])]), replicas=[1])
    assert [p.replica for p in sched.programs] == [1]
    assert sched.groups["emb"] == (0, 3)  # groups still name every holder


def test_interleaved_chunks_take_consecutive_layers_in_virtual_stage_order():
    plan = plan_of([(4, [(0, 4, 0, [0]), (4, 6, 1, [0])])], "interleaved-1f1b", 2)
    assert chunk_layers(plan.replicas[0], 2) == (((0, 2), (3, 5)), ((2, 3), (5, 6)))


def test_interleaved_needs_whole_groups_of_micro_batches_and_chunks():
    stages = [(0, 2, 0, [0]), (2, 4, 1, [0])]
    with pytest.raises(PolychipError, match="multiple of 2"):
        build_schedule(plan_of([(3, stages)], "interleaved-1f1b", 2))
    with pytest.raises(PolychipError, match="stage 0 has 1 layers"):
        build_schedule(plan_of([(4, [(0, 1, 0, [0]), (1, 4, 1, [0])])], "interleaved-1f1b", 2))
