"""What a simulated step reports: critical path, estimate, per-device figures; and that
replaying one representative per class of alike replicas changes none of it."""

from __future__ import annotations

import pytest

from polychip.plan import Estimate
from polychip.simulator import simulate

from .plans import MIXED, make_plan, mixed_plan


@pytest.mark.parametrize("overlap", [True, False])
def test_replaying_one_of_each_class_gives_the_full_replays_figures(overlap):
    plan = mixed_plan()
    once = simulate(plan, overlap_grad_sync=overlap)
    every = simulate(plan, overlap_grad_sync=overlap, dedupe_replicas=False)
    assert len(once.recording.programs) == 5 and len(every.recording.programs) == 7
    for field in ("step_time_s", "pipeline_s", "dp_sync_s", "optimizer_s", "bubble_fraction"):
        assert getattr(once, field) == pytest.approx(getattr(every, field), rel=1e-9), field
    for link_once, link_every in zip(once.links, every.links, strict=True):
        assert link_once.transfers == link_every.transfers
        assert link_once.n_bytes == pytest.approx(link_every.n_bytes)
    for rank in range(plan.world_size):
        assert once.busy_fraction(rank) == pytest.approx(every.busy_fraction(rank), rel=1e-9)


def test_the_critical_path_adds_up_to_the_step_and_names_the_slow_stage():
    plan = make_plan(
        MIXED, [[(16, 0, 8), (16, 2, 8)]], model="llama2-7b", micro_batches=8, seq_len=2048
    )
    result = simulate(plan)
    assert sum(s for _, s in result.critical_path) == pytest.approx(result.step_time_s)
    top, share = result.critical_path[0]
    assert top == "stage 1 on ascend-910b" and share > 0.6 * result.step_time_s
    assert result.critical_path_text().startswith("stage 1 on ascend-910b: ")


def test_the_critical_path_with_several_replicas_counts_the_allreduce():
    result = simulate(mixed_plan(), overlap_grad_sync=False)
    assert sum(s for _, s in result.critical_path) == pytest.approx(result.step_time_s)
    names = [what for what, _ in result.critical_path]
    assert "gradient all-reduce" in names
    assert any(n.startswith("replica ") for n in names)


def test_the_estimate_is_labelled_simulated_and_sums_up():
    result = simulate(mixed_plan())
    est = result.to_estimate()
    assert isinstance(est, Estimate) and est.source == "simulated"
    assert est.step_time_s == result.step_time_s
    assert sum(est.breakdown_s.values()) == pytest.approx(est.step_time_s)
    assert set(est.peak_memory_bytes) == {"h800", "ascend-910b"}
    assert est.peak_memory_bytes["h800"] <= est.memory_capacity_bytes["h800"]
    assert 0 < est.mfu < 1 and 0 <= est.bubble_fraction < 1
    assert result.tokens_per_s == pytest.approx(4 * 4 * 2048 / result.step_time_s)  # 4 x 4 seqs


def test_per_device_figures():
    result = simulate(mixed_plan())
    first, second = result.stages[0], result.stages[1]
    assert first.replicas == (0, 1) and first.ranks == (0, 1, 2, 3)
    assert result.stage_of_rank(13) is first  # replica 1, stage 0
    assert 0 < result.busy_fraction(5) <= 1
    assert second.peak_in_flight == 1 and first.peak_in_flight == 2
    with pytest.raises(KeyError):
        result.busy_fraction(10_000)
    mem = result.memory_timeline[0]
    assert max(b for _, b in mem) == first.peak_memory_bytes
    assert [t for t, _ in mem] == sorted(t for t, _ in mem)
