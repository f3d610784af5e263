"""validate_plan: each broken invariant is rejected, naming the field path."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from polychip.plan import Plan, PlanError, Replica, Stage, validate_plan

from .handbuilt_plan import make_plan


def _stage(plan: Plan, ri: int, si: int, **changes: object) -> Plan:
    reps = list(plan.replicas)
    stages = list(reps[ri].stages)
    stages[si] = dataclasses.replace(stages[si], **changes)
    reps[ri] = dataclasses.replace(reps[ri], stages=tuple(stages))
    return dataclasses.replace(plan, replicas=tuple(reps))


def _replica(plan: Plan, ri: int, **changes: object) -> Plan:
    reps = list(plan.replicas)
    reps[ri] = dataclasses.replace(reps[ri], **changes)
    return dataclasses.replace(plan, replicas=tuple(reps))


def test_the_hand_built_plan_is_valid() -> None:
    validate_plan(make_plan())


CASES: list[tuple[str, Callable[[Plan], Plan], str, str]] = [
    ("layer on no stage", lambda p: _stage(_stage(p, 0, 0, layer_end=2), 0, 1, layer_start=3),
     "replicas[0].stages[1].layers", "must start at layer 2"),
    ("overlapping stages", lambda p: _stage(p, 0, 1, layer_start=2),
     "replicas[0].stages[1].layers", "exactly one stage"),
    ("empty only stage", lambda p: _stage(p, 1, 0, layer_end=0),
     "replicas[1].stages[0].layers", "may have no transformer block"),
    ("last layer on no stage", lambda p: _stage(p, 1, 0, layer_end=3),
     "replicas[1].stages", "the model has 4"),
    ("layers beyond the model", lambda p: _stage(p, 1, 0, layer_end=5),
     "replicas[1].stages", "the model has 4"),
    ("stages out of order", lambda p: _replica(p, 0, stages=p.replicas[0].stages[::-1]),
     "replicas[0].stages[0].layers", "must start at layer 0"),
    ("device used twice", lambda p: _stage(p, 1, 0, local_devices=(5,)),
     "replicas[1].stages[0].local_devices", "already used by replicas[0].stages[1]"),
    ("device twice in a stage", lambda p: _stage(p, 0, 0, local_devices=(1, 1)),
     "replicas[0].stages[0].local_devices", "device 1 of node 0 is already used"),
    ("chip does not match node", lambda p: _stage(p, 0, 0, chip="ascend-910b"),
     "replicas[0].stages[0].chip", "node 0 has 'h800'"),
    ("node out of range", lambda p: _stage(p, 1, 0, node=2),
     "replicas[1].stages[0].node", "it has 2"),
    ("slot out of range", lambda p: _stage(p, 1, 0, local_devices=(8,)),
     "replicas[1].stages[0].local_devices", "it has 8"),
    ("no chips", lambda p: _stage(p, 1, 0, local_devices=()),
     "replicas[1].stages[0].local_devices", "at least one chip"),
    ("tp does not divide kv heads", lambda p: _stage(p, 0, 0, local_devices=(0, 1, 2, 3)),
     "replicas[0].stages[0].tp", "num_kv_heads 2"),
    ("tp does not divide heads", lambda p: _stage(p, 0, 0, local_devices=(0, 1, 2)),
     "replicas[0].stages[0].tp", "num_heads 4"),
    ("batch shares do not sum", lambda p: _replica(p, 1, batch_size=8),
     "replicas", "sum to 16, the job's global batch is 12"),
    ("micro-batch does not divide", lambda p: _replica(p, 0, micro_batch_size=3),
     "replicas[0].micro_batch_size", "must divide batch_size 8"),
    ("micro-batch zero", lambda p: _replica(p, 0, micro_batch_size=0),
     "replicas[0].micro_batch_size", "≥ 1"),
    ("batch zero", lambda p: _replica(p, 1, batch_size=0),
     "replicas[1].batch_size", "≥ 1"),
    ("virtual stages without interleaving", lambda p: dataclasses.replace(p, virtual_stages=2),
     "virtual_stages", "interleaved-1f1b"),
    ("virtual stages zero", lambda p: dataclasses.replace(
        p, schedule="interleaved-1f1b", virtual_stages=0), "virtual_stages", "≥ 1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "field", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_plan_is_rejected_naming_the_field(
    edit: Callable[[Plan], Plan], field: str, rule: str
) -> None:
    broken = edit(make_plan())
    with pytest.raises(PlanError) as info:
        validate_plan(broken)
    msg = str(info.value)
    assert msg.startswith(f"{field}: "), msg
    assert rule in msg, msg
    with pytest.raises(PlanError) as info:
        validate_plan(broken, file="p.json")
    assert str(info.value) == f"p.json: {msg}"


def test_an_empty_replica_list_is_rejected() -> None:
    with pytest.raises(PlanError, match="sum to 0"):
        validate_plan(dataclasses.replace(make_plan(), replicas=()))


def test_interleaved_with_virtual_stages_is_accepted() -> None:
    validate_plan(dataclasses.replace(make_plan(), schedule="interleaved-1f1b", virtual_stages=2))


def test_every_layer_on_one_stage_property() -> None:
    # A brute-force check of the invariant on random splits: validate_plan accepts exactly
    # the splits that cover [0, L) once, in order, every stage holding a block except
    # possibly the first (embedding only) or the last (head only) of a longer pipeline.
    rng = random.Random(7)
    base = make_plan()
    outcomes = set()
    for _ in range(200):
        cuts = sorted(rng.sample(range(0, 6), rng.randint(1, 4)))
        bounds = list(zip(cuts, [*cuts[1:], rng.choice([4, 5, 3])], strict=True))
        stages = tuple(
            Stage(a, b, node=0, local_devices=(i,), chip="h800") for i, (a, b) in enumerate(bounds)
        )
        plan = dataclasses.replace(base, replicas=(Replica(stages, 8, 2), base.replicas[1]))
        covered = [layer for a, b in bounds for layer in range(a, b)]
        ends = (0, len(bounds) - 1) if len(bounds) > 1 else ()
        good = covered == list(range(4)) and all(
            b > a or (b == a and i in ends) for i, (a, b) in enumerate(bounds)
        )
        outcomes.add(good)
        if good:
            validate_plan(plan)
        else:
            with pytest.raises(PlanError, match=r"replicas\[0\]\.stages"):
                validate_plan(plan)
    assert outcomes == {True, False}


def _three_stages(*layers: tuple[int, int]) -> Plan:
    base = make_plan()
    stages = tuple(Stage(a, b, node=0, local_devices=(i,), chip="h800")
                   for i, (a, b) in enumerate(layers))
    return dataclasses.replace(base, replicas=(Replica(stages, 8, 2), base.replicas[1]))


def test_only_a_pipelines_first_or_last_stage_may_hold_no_block() -> None:
    validate_plan(_three_stages((0, 0), (0, 4), (4, 4)))  # embedding only, head only
    with pytest.raises(PlanError, match=r"replicas\[0\]\.stages\[1\]\.layers: empty; only"):
        validate_plan(_three_stages((0, 2), (2, 2), (2, 4)))
    interleaved = dataclasses.replace(_three_stages((0, 0), (0, 2), (2, 4)),
                                      schedule="interleaved-1f1b", virtual_stages=2)
    with pytest.raises(PlanError, match=r"stages\[0\]\.layers: empty, under interleaved-1f1b"):
        validate_plan(interleaved)
