"""The pipeline's closed form (`costmodel.pipeline.PipelineForm`): the textbook cases, the
1F1B window, and the properties the planner's batch split relies on."""

from __future__ import annotations

import random

import pytest

from polychip.costmodel.pipeline import PipelineForm, interleaved_form
from polychip.costmodel.pipeline_zb import ZeroBubbleForm


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "interleaved-1f1b"])
@pytest.mark.parametrize(("stages", "m"), [(1, 1), (1, 9), (4, 1), (4, 3), (4, 16), (8, 8)])
def test_balanced_pipeline_with_free_links_is_the_textbook_form(schedule, stages, m) -> None:
    form = PipelineForm.of([3.0] * stages, [0.0] * (stages - 1), schedule)
    assert form.span_s(m) == pytest.approx((m + stages - 1) * 3.0)


def test_1f1b_window_exposes_a_slow_link_that_gpipe_hides() -> None:
    # two stages of 6 s, a 13 s link: stage 0 holds 2 micro-batches while the round trip
    # 6 + 13 + 6 + 13 = 38 s runs, so from the third micro-batch on each adds 19 s
    f1b = PipelineForm.of([6.0, 6.0], [13.0], "1f1b")
    gpipe = PipelineForm.of([6.0, 6.0], [13.0], "gpipe")
    assert f1b.fill_s == gpipe.fill_s == 38.0
    assert gpipe.beat_s(2) == gpipe.beat_s(100) == 13.0
    assert f1b.beat_s(2) == 13.0  # m = 2 fits in stage 0's window: no wait for it
    assert f1b.beat_s(3) == f1b.beat_s(100) == 19.0
    assert f1b.span_s(8) == 38.0 + 7 * 19.0
    assert gpipe.span_s(8) == 38.0 + 7 * 13.0
    assert (f1b.bottleneck_s, f1b.steady_beat_s) == (13.0, 19.0)


def test_later_stages_windows_count_too() -> None:
    # stage 1 -> 2 over a slow link: stage 1's window of 2 binds before stage 0's of 3
    form = PipelineForm.of([1.0, 1.0, 1.0], [0.0, 4.0], "1f1b")
    assert form.beat_s(2) == 4.0  # the slow link itself
    assert form.beat_s(3) == (1.0 + 1.0 + 2 * 4.0) / 2  # stage 1: round trip over 2
    assert form.beat_s(4) == max(5.0, (3.0 + 2 * 4.0) / 3)


def test_two_neighbours_share_a_window_too() -> None:
    # stages 0 and 1 (1 s each) joined by a 1 s link, a quick last stage: stage 0 runs one
    # forward more than stage 1 before its first backward, so any two micro-batches' round
    # trips through stages 0..1 overlap at most twice: (1 + 1 + 2 x 1) / 2 = 2 s each
    form = PipelineForm.of([1.0, 1.0, 0.2], [1.0, 0.0], "1f1b")
    assert form.beat_s(2) == 1.0
    assert form.beat_s(3) == 2.0  # suffixes alone would give max(1, (1 + 0.2) / 2) = 1
    assert form.beat_s(4) == 2.0  # the whole window (1 + 1 + 0.2 + 2) / 3 = 1.4 is less


@pytest.mark.parametrize("seed", range(40))
def test_beat_and_span_never_decrease_with_more_micro_batches(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    stages = [rng.uniform(0.1, 5.0) for _ in range(n)]
    links = [rng.choice([0.0, rng.uniform(0.0, 6.0)]) for _ in range(n - 1)]
    for schedule in ("1f1b", "gpipe"):
        form = PipelineForm.of(stages, links, schedule)
        beats = [form.beat_s(m) for m in range(1, 3 * n + 3)]
        spans = [form.span_s(m) for m in range(1, 3 * n + 3)]
        assert beats == sorted(beats) and spans == sorted(spans)
        assert form.span_s(1) == pytest.approx(sum(stages) + 2 * sum(links))
        assert form.bottleneck_s == max([*stages, *links])
    # GPipe never waits for a window: never slower than 1F1B in the closed form
    assert PipelineForm.of(stages, links, "gpipe").span_s(2 * n) <= PipelineForm.of(
        stages, links, "1f1b"
    ).span_s(2 * n)


def test_links_must_match_stages() -> None:
    with pytest.raises(ValueError, match="3 stages need 2 links"):
        PipelineForm.of([1.0, 1.0, 1.0], [0.0], "1f1b")


@pytest.mark.parametrize("m", [1, 2, 8])
def test_transfers_not_overlapped_add_exactly_each_stages_own_transfers(m: int) -> None:
    # Three stages of 5 s, links of 1 s and 2 s (DeepSpeed's engine: blocking send/recv).
    # Each micro-batch, stage i receives and sends on both its boundaries: the middle stage
    # is busy 5 + 2 (1 + 2) = 11 s, the others 7 s and 9 s. The first pass is unchanged.
    stages, links = [5.0, 5.0, 5.0], [1.0, 2.0]
    overlapped = PipelineForm.of(stages, links, "gpipe")
    blocking = PipelineForm.of(stages, links, "gpipe", overlap_p2p=False)
    assert blocking.fill_s == overlapped.fill_s == 15.0 + 2 * 3.0
    assert overlapped.beat_s(m) == 5.0
    assert blocking.beat_s(m) == 11.0
    assert blocking.span_s(m) - overlapped.span_s(m) == pytest.approx((m - 1) * 2 * (1.0 + 2.0))


def test_1f1b_round_trips_count_each_blocking_transfer_once() -> None:
    # Two stages of 6 s, a 13 s link, blocking: each stage is busy 6 + 2 x 13 = 32 s per
    # micro-batch; the round trip of both (6 + 13 + 6 + 13 = 38 s over 2) binds less.
    form = PipelineForm.of([6.0, 6.0], [13.0], "1f1b", overlap_p2p=False)
    assert form.fill_s == 38.0
    assert form.beat_s(2) == form.beat_s(100) == 32.0
    # A lone stage has no transfers to expose.
    assert PipelineForm.of([6.0], [], "1f1b", overlap_p2p=False).span_s(4) == 24.0


# ---- ZB-H1 and interleaved 1F1B (the replay: tests/simulator/test_schedule_agreement.py) --


@pytest.mark.parametrize(("S", "M"), [(1, 5), (2, 4), (4, 4), (4, 16), (8, 8), (8, 64)])
@pytest.mark.parametrize(("f", "b", "w"), [(1.0, 1.0, 1.0), (1.0, 2.0, 1.0), (1.0, 1.0, 2.0),
                                           (2.0, 1.5, 0.5), (1.0, 1.0, 0.0)])
def test_zb_h1_uniform_bubble_is_s_minus_1_times_f_plus_b_minus_w(S, M, f, b, w) -> None:
    form = ZeroBubbleForm.of([f] * S, [b] * S, [w] * S, [0.0] * (S - 1))
    t = f + b + w
    assert form.span_s(M) == pytest.approx(M * t + (S - 1) * (f + max(b - w, 0.0)))
    one = PipelineForm.of([t] * S, [0.0] * (S - 1), "1f1b").span_s(M)
    assert one - form.span_s(M) == pytest.approx((S - 1) * (w + min(b, w)))  # the saving
    assert form.steady_beat_s == pytest.approx(t)


def test_zb_h1_with_fewer_micro_batches_than_stages_is_one_round_trip_plus_its_ws() -> None:
    # one micro-batch: every F, then every B back, then stage 0's W (the other stages' W's
    # run while the input gradient walks back)
    form = ZeroBubbleForm.of([1.0] * 3, [1.0] * 3, [1.0] * 3, [0.0, 0.0])
    assert form.span_s(1) == pytest.approx(3 + 3 + 1)
    assert form.span_s(2) == pytest.approx(9.0)  # the replay's figure (S = 3, M = 2)


def test_zb_h1_slow_link_paces_it_like_1f1b_without_the_w_on_the_round_trip() -> None:
    # two stages of f = b = w = 2 s and a 13 s link: the window of 2 micro-batches needs the
    # round trip f + b (stage 0) + w (stage 0, before its next forward) + 2 x 13 + f + b
    form = ZeroBubbleForm.of([2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [13.0])
    assert form.link_beat_s(3) == pytest.approx((4 + 2 + 26 + 4) / 2)
    assert form.beat_s(3) == pytest.approx(18.0)
    assert PipelineForm.of([6.0, 6.0], [13.0], "1f1b").beat_s(3) == pytest.approx(19.0)


@pytest.mark.parametrize("seed", range(30))
def test_zb_h1_span_grows_with_micro_batches_and_never_exceeds_1f1b(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    f, b, w = ([rng.uniform(0.1, 3.0) for _ in range(n)] for _ in range(3))
    links = [rng.choice([0.0, rng.uniform(0.0, 4.0)]) for _ in range(n - 1)]
    form = ZeroBubbleForm.of(f, b, w, links)
    one = PipelineForm.of([x + y + z for x, y, z in zip(f, b, w, strict=True)], links, "1f1b")
    spans = [form.span_s(m) for m in range(1, 3 * n + 4)]
    assert spans == sorted(spans)
    for m in range(1, 3 * n + 4):
        assert form.span_s(m) <= one.span_s(m) * (1 + 1e-12)


def _random_forms(seed: int, most: int) -> tuple[ZeroBubbleForm, PipelineForm, int]:
    """ZB-H1's and 1F1B's forms of one random pipeline of up to ``most`` stages (links
    free, slow or very slow)."""
    rng = random.Random(seed)
    n = rng.randint(1, most)
    f, b, w = ([rng.uniform(0.01, 1.0) for _ in range(n)] for _ in range(3))
    links = [rng.choice([0.0, rng.uniform(0.0, 0.5), rng.uniform(0.0, 3.0)])
             for _ in range(n - 1)]
    one = PipelineForm.of([x + y + z for x, y, z in zip(f, b, w, strict=True)], links, "1f1b")
    return ZeroBubbleForm.of(f, b, w, links), one, n


@pytest.mark.parametrize("seed", range(40))
def test_zb_h1_long_pipelines_are_the_chains_regrouped(seed: int) -> None:
    """From m >= S on, `span_s` takes each chain as a line in m (kept once per form); it
    is the chains' own walk (`_chains_s`, `_link_chain_s`) up to float rounding."""
    form, _, n = _random_forms(seed, 16)
    for m in range(n, 3 * n + 4):
        walked = max(form._chains_s(m), form._link_chain_s(m))
        assert form.span_s(m) == pytest.approx(walked, rel=1e-12)


@pytest.mark.parametrize("seed", range(60))
def test_floor_fill_is_a_line_below_every_span(seed: int) -> None:
    """`floor_fill_s + (m - 1) bottleneck_s` never exceeds the span (the exhaustive
    planner's bound on the sequences a replica finishes by a time); 1F1B's is its span at
    one micro-batch, ZB-H1's (whose ramp puts span(1) above that line) below it."""
    zb, one, n = _random_forms(seed, 12)
    for form in (zb, one):
        gaps = [form.span_s(m) - form.floor_fill_s - (m - 1) * form.bottleneck_s
                for m in range(1, 4 * n + 4)]
        assert min(gaps) >= -1e-9 * form.span_s(4 * n + 3)
    assert one.floor_fill_s == one.span_s(1)
    assert 0 < zb.floor_fill_s <= zb.span_s(1)


@pytest.mark.parametrize(("S", "v", "M"), [(2, 2, 4), (4, 2, 8), (4, 4, 8), (8, 2, 16)])
def test_interleaved_balanced_free_links_is_the_textbook_form(S, v, M) -> None:
    form = interleaved_form([3.0] * S, [0.0] * (S - 1), v, 0.0)
    assert form.span_s(M) == pytest.approx(M * 3.0 + (S - 1) * 3.0 / v)


def test_interleaved_crosses_every_link_v_times_and_the_wrap_v_minus_1() -> None:
    S, v, c, wrap = 4, 2, 0.01, 0.02
    free = interleaved_form([3.0] * S, [0.0] * (S - 1), v, 0.0)
    form = interleaved_form([3.0] * S, [c] * (S - 1), v, wrap)
    assert form.fill_s - free.fill_s == pytest.approx(2 * (v * 3 * c + (v - 1) * wrap))
    slow = interleaved_form([3.0] * S, [2.0] * (S - 1), v, 0.0)
    assert slow.bottleneck_s == pytest.approx(v * 2.0)  # a link carries v transfers each way
    assert interleaved_form([3.0], [], 4, 9.0).span_s(5) == pytest.approx(15.0)  # no links
