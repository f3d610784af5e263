"""Emulated chip clocks: phases last exactly dilation x target; overruns are counted."""

from __future__ import annotations

import time

import pytest

from polychip.runtime.dilation import DilationGovernor
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.slots import PhaseClock

TOLERANCE_S = 0.01  # sleep wake-up latency on a busy host; the lower bound is exact


def test_phase_lasts_dilation_times_target() -> None:
    clock = PhaseClock(dilation=2.0)
    begin = time.perf_counter()
    with clock.phase("forward", target_s=0.05):
        sum(range(1000))  # the real work, far shorter than the slot
    elapsed = time.perf_counter() - begin
    assert 0.1 <= elapsed < 0.1 + TOLERANCE_S
    totals = clock.summary().phase("forward")
    assert totals.num_calls == 1 and totals.num_overruns == 0
    assert totals.slot_s == pytest.approx(0.1)
    assert totals.compute_s + totals.padded_s == pytest.approx(0.1, abs=TOLERANCE_S)


def test_body_longer_than_slot_is_an_overrun_and_not_padded() -> None:
    clock = PhaseClock(dilation=2.0)
    begin = time.perf_counter()
    with clock.phase("backward", target_s=0.01):
        time.sleep(0.05)
    elapsed = time.perf_counter() - begin
    assert 0.05 <= elapsed < 0.05 + TOLERANCE_S
    summary = clock.summary()
    assert summary.num_overruns == 1
    totals = summary.phase("backward")
    assert totals.padded_s == 0.0 and totals.compute_s >= 0.05


def test_totals_accumulate_per_phase() -> None:
    clock = PhaseClock(dilation=1.0)
    for _ in range(3):
        with clock.phase("a", target_s=0.002):
            pass
    with clock.phase("b", target_s=0.0):
        pass
    summary = clock.summary()
    assert [p.name for p in summary.phases] == ["a", "b"]
    assert summary.phase("a").num_calls == 3
    assert summary.phase("a").slot_s == pytest.approx(0.006)
    assert summary.phase("b").num_overruns == 1  # a zero-length slot is always overrun


def test_a_failing_body_is_not_padded_or_counted() -> None:
    clock = PhaseClock(dilation=1.0)
    begin = time.perf_counter()
    with pytest.raises(ZeroDivisionError), clock.phase("forward", target_s=1.0):
        _ = 1 / 0
    assert time.perf_counter() - begin < 0.5
    assert clock.summary().phases == ()


def test_bad_dilation_and_missing_target_are_setup_errors() -> None:
    with pytest.raises(RuntimeSetupError, match="dilation=0"):
        PhaseClock(dilation=0)
    clock = PhaseClock(dilation=3.0)
    with pytest.raises(RuntimeSetupError, match="target_s=None"), clock.phase("forward", None):
        pass


def test_chained_phases_make_up_for_a_late_one() -> None:
    """Back-to-back micro-batches keep the emulated chip's schedule: after a late phase the
    next slots start where the previous slot ended, so the sequence ends on time."""
    clock = PhaseClock(dilation=1.0)
    begin = time.perf_counter()
    with clock.phase("mb", target_s=0.02):
        time.sleep(0.03)  # late by 10 ms
    for _ in range(2):
        with clock.phase("mb", target_s=0.02, chain=True):
            pass
    elapsed = time.perf_counter() - begin
    assert 0.06 <= elapsed < 0.06 + TOLERANCE_S  # 3 slots of 20 ms, not 30 + 20 + 20
    summary = clock.summary()
    assert summary.phase("mb").num_overruns == 1
    assert summary.lost_s == 0.0  # made up: the sequence ended on time
    with clock.phase("optimizer", target_s=0.01):
        time.sleep(0.02)  # late, and nothing follows to make it up
    assert clock.summary().lost_s == pytest.approx(0.01, abs=TOLERANCE_S)


def test_governor_raises_the_dilation_when_overruns_cost_time() -> None:
    gov = DilationGovernor(20.0, step_target_s=0.01, window=3, max_lost=0.02)
    # budget per window: 2 % of 3 steps of 20 x 10 ms = 12 ms lost, summed over ranks
    assert [gov.observe(0.003) for _ in range(3)] == [None, None, None]  # 9 ms: fine
    assert [gov.observe(0.005) for _ in range(3)] == [None, None, 25.0]  # 15 ms: raise
    assert gov.dilation == 25.0
    assert [gov.observe(0.005) for _ in range(3)] == [None, None, None]  # budget now 15 ms


def test_clock_takes_a_new_dilation_and_keeps_its_totals() -> None:
    clock = PhaseClock(dilation=1.0)
    with clock.phase("a", target_s=0.0):
        pass
    clock.set_dilation(2.0)
    assert clock.dilation == 2.0 and clock.summary().phase("a").num_calls == 1
    with pytest.raises(RuntimeSetupError):
        clock.set_dilation(0.0)
