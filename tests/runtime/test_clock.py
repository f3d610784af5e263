"""The clocks the stage executor is given: a step's phases add up to it, measured on the wall
clock; the emulated clock's slots and waits count 1/dilation of chip time, the host's own
work outside them its real (CPU) time."""

from __future__ import annotations

import time

import pytest

from polychip.plan.schedule import Action, Op
from polychip.runtime.clock import Phase, PhaseSeconds, WallClock
from polychip.runtime.emulate import EmulatedClock, PhaseTargets

TOLERANCE_S = 0.01  # sleep wake-up latency on a busy host
F, B = Action(Op.FORWARD, micro=0), Action(Op.BACKWARD, micro=0)
RA, AR, OPT = Action(Op.RECV_ACT, micro=0, peer=1), Action(Op.ALLREDUCE, segment="s"), \
    Action(Op.OPTIMIZER)


def _busy(cpu_s: float) -> None:
    """Real host work: ``cpu_s`` seconds of this thread's CPU time."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def _sum(p: PhaseSeconds) -> float:
    return p.compute_s + p.pipeline_wait_s + p.grad_sync_s + p.optimizer_s + p.idle_s


def test_wall_clock_phases_and_idle_add_up_to_the_step() -> None:
    clock = WallClock()
    clock.start_step()
    time.sleep(0.01)  # idle: between phases
    with clock.phase(Phase.COMPUTE, F):
        time.sleep(0.02)
    with clock.phase(Phase.PIPELINE_WAIT, RA):
        time.sleep(0.01)
    with clock.phase(Phase.GRAD_SYNC, AR, ("s",)):
        time.sleep(0.005)
    with clock.phase(Phase.OPTIMIZER, OPT):
        time.sleep(0.005)
    timing = clock.finish_step()
    m = timing.measured
    assert timing.emulated is None and timing.dilation is None
    assert _sum(m) == pytest.approx(m.seconds, rel=1e-12)
    for got, want in ((m.compute_s, 0.02), (m.pipeline_wait_s, 0.01), (m.grad_sync_s, 0.005),
                      (m.optimizer_s, 0.005), (m.idle_s, 0.01)):
        assert want <= got < want + TOLERANCE_S  # sleeps: at least, and soon after
    with pytest.raises(ZeroDivisionError), clock.phase(Phase.COMPUTE, F):
        _ = 1 / 0
    assert [s.phase for s in clock.spans] == [Phase.COMPUTE, Phase.PIPELINE_WAIT,
                                              Phase.GRAD_SYNC, Phase.OPTIMIZER]


TARGETS = PhaseTargets(chunk_s=((0.01, 0.02),), optimizer_s=0.005, recv_act_s=0.01,
                       recv_grad_s=0.0, allreduce_s={"s": 0.004})


def test_emulated_chip_time_counts_slots_and_waits_at_1_over_dilation_host_work_in_full(
        ) -> None:
    d = 2.0
    clock = EmulatedClock(TARGETS, d)
    clock.start_step()
    _busy(0.01)  # host work before the first phase: 10 ms of CPU ...
    time.sleep(0.01)  # ... and 10 ms waiting for a core (not the emulated chip's time)
    with clock.phase(Phase.COMPUTE, F):  # a 20 ms slot
        pass
    with clock.phase(Phase.COMPUTE, B):  # chained: a 40 ms slot from the last one's end
        pass
    sent = time.perf_counter()
    with clock.phase(Phase.PIPELINE_WAIT, RA):
        clock.delivered(RA, sent)  # the emulated link: 2 x 10 ms after the send
    with clock.phase(Phase.GRAD_SYNC, AR, ("s",)):
        time.sleep(0.006)  # the host's collective, then the 2 x 4 ms emulated link
    with clock.phase(Phase.OPTIMIZER, OPT):  # a 10 ms slot
        pass
    timing = clock.finish_step()
    m, e = timing.measured, timing.emulated
    assert e is not None and timing.dilation == d and timing.overruns == 0
    assert _sum(m) == pytest.approx(m.seconds, rel=1e-12)
    assert _sum(e) == pytest.approx(e.seconds, rel=1e-12)
    # the chained B slot ends 60 ms after F's slot began, whatever ran between the two
    # phases (counted as idle, not compute): at least 60 ms less that gap
    gap = clock.spans[1].begin - clock.spans[0].end
    assert 0.06 - gap <= m.compute_s < 0.06 + TOLERANCE_S
    assert m.idle_s >= 0.02  # the wall clock: CPU work, and the wait for a core
    assert e.compute_s == pytest.approx(0.03, abs=TOLERANCE_S / d)  # the cost model's times
    assert e.optimizer_s == pytest.approx(0.005, abs=TOLERANCE_S / d)
    assert e.pipeline_wait_s == pytest.approx(0.01, abs=TOLERANCE_S / d)
    assert e.grad_sync_s == pytest.approx((0.006 + 0.008) / d, abs=TOLERANCE_S / d)
    assert 0.01 <= e.idle_s < 0.01 + TOLERANCE_S  # the CPU seconds of the host work
    assert timing.padding_s == pytest.approx(0.06 + 0.01 + 0.02 + 0.008, abs=2 * TOLERANCE_S)


def test_host_work_between_chained_slots_is_inside_the_next_slot() -> None:
    """Data read between two back-to-back micro-batches is absorbed by the chained slot (as
    on a chip that has the next kernels queued), so it is the chip's compute time, 1/d."""
    d = 2.0
    clock = EmulatedClock(TARGETS, d)
    clock.start_step()
    with clock.phase(Phase.COMPUTE, F):
        pass
    _busy(0.005)  # far shorter than the next slot (40 ms): made up
    with clock.phase(Phase.COMPUTE, B):
        pass
    timing = clock.finish_step()
    m, e = timing.measured, timing.emulated
    assert e is not None and timing.overruns == 0
    assert m.idle_s >= 0.005
    assert 0.06 <= m.seconds < 0.06 + TOLERANCE_S  # 20 + 40 ms: the data was absorbed
    assert e.compute_s == pytest.approx(0.03, abs=TOLERANCE_S / d)
    assert e.idle_s < 0.002


def test_the_governor_raises_every_clock_of_a_run_alike() -> None:
    clock = EmulatedClock(TARGETS, 2.0)
    clock.raise_dilation_to(1.5)  # never lowered
    assert clock.dilation == 2.0
    clock.raise_dilation_to(3.0)
    assert clock.dilation == 3.0
    wall = WallClock()
    wall.raise_dilation_to(3.0)
    assert wall.dilation is None


def test_an_injected_slow_chip_stretches_compute_only() -> None:
    """``compute_factor`` (runtime.faults.SLOW_ENV): an emulated chip's forward and backward
    slots, in emulated chip time too, and a plain run's measured compute; not the optimizer."""
    d, factor = 2.0, 3.0
    clock = EmulatedClock(TARGETS, d)
    clock.compute_factor = factor
    clock.start_step()
    with clock.phase(Phase.COMPUTE, F):
        pass
    with clock.phase(Phase.COMPUTE, B):
        pass
    with clock.phase(Phase.OPTIMIZER, OPT):
        pass
    e = clock.finish_step().emulated
    assert e is not None
    assert e.compute_s == pytest.approx(factor * 0.03, abs=TOLERANCE_S / d)
    assert e.optimizer_s == pytest.approx(0.005, abs=TOLERANCE_S / d)

    wall = WallClock()
    wall.compute_factor = factor
    wall.start_step()
    with wall.phase(Phase.COMPUTE, F):
        time.sleep(0.01)
    with wall.phase(Phase.OPTIMIZER, OPT):
        time.sleep(0.01)
    m = wall.finish_step().measured
    assert factor * 0.01 <= m.compute_s < factor * 0.01 + TOLERANCE_S
    assert 0.01 <= m.optimizer_s < 0.01 + TOLERANCE_S


def test_the_slow_chip_variable_is_parsed_for_its_rank_only(monkeypatch) -> None:
    from polychip.runtime.errors import RuntimeSetupError
    from polychip.runtime.faults import SLOW_ENV, injected_slowdown

    monkeypatch.setenv(SLOW_ENV, "2:3:5")
    assert injected_slowdown(2) == (3.0, 5) and injected_slowdown(1) is None
    for bad in ("2:3", "x:3:5", "2:0.5:5", "2:3:-1", "2:nan:1"):
        monkeypatch.setenv(SLOW_ENV, bad)
        with pytest.raises(RuntimeSetupError, match=r"RANK:FACTOR:STEP|FACTOR must"):
            injected_slowdown(2)
    monkeypatch.delenv(SLOW_ENV)
    assert injected_slowdown(2) is None


def test_compute_overruns_count_forward_and_backward_only() -> None:
    clock = EmulatedClock(TARGETS, 1.0)
    clock.start_step()
    with clock.phase(Phase.COMPUTE, F):  # a 10 ms slot, 30 ms of work
        time.sleep(0.03)
    with clock.phase(Phase.OPTIMIZER, OPT):  # a 5 ms slot, 20 ms of work
        time.sleep(0.02)
    timing = clock.finish_step()
    assert (timing.overruns, timing.compute_overruns) == (2, 1)
