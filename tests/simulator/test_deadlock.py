"""A schedule that cannot finish says which ranks wait for what."""

from __future__ import annotations

import pytest

from polychip.plan import build_schedule, format_schedule, parse_schedule
from polychip.simulator import SimulationDeadlock, simulate
from polychip.spec.errors import PolychipError

from .plans import FixedTimes, free_comm_cluster, make_plan

PLAN = make_plan(free_comm_cluster(3), [[(2, 0, 1), (2, 1, 1)], [(4, 2, 1)]], micro_batches=2)
TEXT = format_schedule(build_schedule(PLAN))


def replay(text: str):
    return simulate(PLAN, schedule=parse_schedule(text), cost_model=FixedTimes(PLAN))


def test_the_unedited_schedule_finishes():
    assert replay(TEXT).step_time_s > 0


def test_a_missing_send_names_both_ranks_and_the_action():
    text = TEXT.replace(" SA1>r1", "", 1)
    with pytest.raises(SimulationDeadlock) as err:
        replay(text)
    msg = str(err.value)
    assert "r1 (replica 0 stage 1) waits at RA1<r0, but r0 never sends SA1>r1" in msg
    assert isinstance(err.value, PolychipError)  # the CLI turns it into exit code 2


def test_receives_in_a_cycle_name_where_each_side_is_stuck():
    # r0 waits for a gradient before sending the activations that would produce it
    text = TEXT.replace("F0 SA0>r1 F1 SA1>r1 RG0<r1", "F0 RG0<r1 SA0>r1 F1 SA1>r1", 1)
    with pytest.raises(SimulationDeadlock, match=r"r0 .* waits at RG0<r1; r1 is itself stuck at"):
        replay(text)


def test_an_allreduce_one_holder_never_reaches_names_the_late_rank():
    lines = TEXT.splitlines()
    lines = [ln.replace(" AR[emb]", "") if ln.startswith("r2 ") else ln for ln in lines]
    with pytest.raises(SimulationDeadlock, match=r"waits at AR\[emb\] for r2"):
        replay("\n".join(lines))


def test_a_send_to_a_rank_that_leads_no_stage_is_named():
    with pytest.raises(SimulationDeadlock, match="r7 leads no stage"):
        replay(TEXT.replace("SA0>r1", "SA0>r7", 1))
