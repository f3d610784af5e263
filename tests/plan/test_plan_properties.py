"""Property tests (hypothesis) over arbitrary valid plans: every generated plan validates,
round-trips through JSON unchanged, and its schedule pairs every send with one receive and
runs every micro-batch's forward and backward exactly once per stage."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from polychip.plan import Op, Plan, Replica, Stage, build_schedule, plan_from_dict, plan_to_dict
from polychip.plan.naive import even_batch_replicas, even_layer_replicas
from polychip.plan.validate import validate_plan
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

CLUSTER = cluster_from_dict(
    {"nodes": [{"chip": "h800", "count": 9, "chips_per_node": 4, "nic_gbps": 400}]}
)
MODEL = ModelSpec("prop", num_layers=6, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=128, vocab_size=256)


@st.composite
def plans(draw) -> Plan:
    """1-3 replicas, each a pipeline of 1-3 stages on its own nodes (TP 1 or 2), uneven
    layer splits, uneven batch shares, micro-batch sizes dividing the shares."""
    replicas = []
    node = 0
    for _ in range(draw(st.integers(1, 3))):
        num_stages = draw(st.integers(1, 3))
        cuts = sorted(draw(st.sets(st.integers(1, MODEL.num_layers - 1),
                                   min_size=num_stages - 1, max_size=num_stages - 1)))
        bounds = [0, *cuts, MODEL.num_layers]
        stages = []
        for a, b in itertools.pairwise(bounds):
            tp = draw(st.sampled_from([1, 2]))
            stages.append(Stage(a, b, node, tuple(range(tp)), "h800",
                                recompute=draw(st.booleans())))
            node += 1
        micro = draw(st.integers(1, 3))
        replicas.append(Replica(tuple(stages), micro * draw(st.integers(1, 4)), micro))
    job = TrainingJob(sum(r.batch_size for r in replicas), draw(st.sampled_from([16, 64])))
    schedule = draw(st.sampled_from(["1f1b", "gpipe"]))
    return Plan(CLUSTER, MODEL, job, tuple(replicas), schedule,  # type: ignore[arg-type]
                zero1=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(plans())
def test_generated_plans_validate_and_round_trip(plan: Plan) -> None:
    validate_plan(plan)
    again = plan_from_dict(plan_to_dict(plan))
    assert again.replicas == plan.replicas
    assert (again.job, again.model, again.schedule, again.zero1) == (
        plan.job, plan.model, plan.schedule, plan.zero1)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_schedule_pairs_sends_with_receives(plan: Plan) -> None:
    schedule = build_schedule(plan)
    sent: Counter = Counter()
    received: Counter = Counter()
    for prog in schedule.programs:
        rep = plan.replicas[prog.replica]
        computed = Counter((a.op, a.micro) for a in prog.actions
                           if a.op in (Op.FORWARD, Op.BACKWARD))
        for m in range(rep.num_micro_batches):
            assert computed[(Op.FORWARD, m)] == computed[(Op.BACKWARD, m)] == 1
        for a in prog.actions:
            if a.op in (Op.SEND_ACT, Op.SEND_GRAD):
                sent[(prog.leader, a.peer, a.op, a.micro)] += 1
            elif a.op in (Op.RECV_ACT, Op.RECV_GRAD):
                kind = Op.SEND_ACT if a.op is Op.RECV_ACT else Op.SEND_GRAD
                received[(a.peer, prog.leader, kind, a.micro)] += 1
        assert prog.actions[-1].op is Op.OPTIMIZER
    assert sent == received


@settings(max_examples=60, deadline=None)
@given(plans())
def test_even_splits_keep_devices_and_cover_everything(plan: Plan) -> None:

    batch = even_batch_replicas(plan)
    shares = [r.batch_size for r in batch]
    assert sum(shares) == plan.job.global_batch and max(shares) - min(shares) <= 1
    assert all(r.batch_size % r.micro_batch_size == 0 for r in batch)
    layers = even_layer_replicas(plan)
    for old, new in zip(plan.replicas, layers, strict=True):
        counts = [s.num_layers for s in new.stages]
        assert max(counts) - min(counts) <= 1
        assert [s.local_devices for s in new.stages] == [s.local_devices for s in old.stages]
    validate_plan(dataclasses.replace(plan, replicas=layers))
