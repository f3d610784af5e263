"""The timeline picture: aggregation of large steps, waits by cause, distinct colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from polychip.simulator import picture_rows as pr
from polychip.simulator import simulate
from polychip.simulator.picture import _memory, line_colours, write_png

from .plans import MIXED, make_plan, mixed_plan


def big_plan():
    """Two cross-island pipelines, 4 stages each, 400 micro-batches: ~10,000 spans."""
    return make_plan(
        MIXED,
        [[(4, 0, 2), (8, 2, 2), (10, 2, 2), (10, 2, 2)], [(12, 1, 2), (20, 3, 2)]],
        model="llama2-7b",
        micro_batches=400,
        seq_len=512,
    )


def test_a_large_step_is_drawn_aggregated_and_says_so(tmp_path):
    result = simulate(big_plan())
    rows = pr.rows(result)
    assert sum(len(r.spans) for r in rows) > pr.DETAIL_EVENTS
    path = tmp_path / "big.png"
    note = write_png(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert note.startswith("aggregated:") and "micro-batches" in note
    (_, head), (tail, end) = pr.windows(rows, result.step_time_s)
    assert 0 < head < tail < end == result.step_time_s
    drawn = sum(len(pr.clip(r, 0, head)) + len(pr.clip(r, tail, end)) for r in rows)
    assert drawn <= pr.DETAIL_EVENTS + 2 * len(rows)  # spans cut by a window's edge


def test_a_small_step_is_drawn_whole(tmp_path):
    result = simulate(mixed_plan())
    assert write_png(result, tmp_path / "small.png") == ""
    assert pr.windows(pr.rows(result), result.step_time_s) == [(0.0, result.step_time_s)]


def test_waits_are_split_by_what_they_wait_for_and_cover_the_wait():
    result = simulate(mixed_plan())
    kinds = set()
    for p in result.recording.programs:
        spans = pr.prog_spans(p)
        kinds |= {k for _, _, k in spans}
        waited = sum(e - s for s, e, _ in p.waits)
        split = sum(e - s for s, e, k in spans if k not in ("F", "B", "OPT"))
        assert abs(waited - split) < 1e-9
    assert {"F", "B", "OPT", "wait_up", "wait_down", "AR"} <= kinds
    assert kinds <= set(pr.KINDS)
    assert all("data" not in text for text, _ in pr.KINDS.values())


def test_the_picture_colours_tell_kinds_and_memory_lines_apart():
    assert len({c for _, c in pr.KINDS.values()} | {pr.IDLE[1]}) == len(pr.KINDS) + 1
    for n in (1, 10, 11, 16, 20):
        assert len(set(line_colours(n))) == n
    result = simulate(big_plan())
    fig, ax = plt.subplots()
    _memory(ax, result, pr.rows(result))
    lines = ax.get_lines()
    capacity = [ln for ln in lines if "capacity" in ln.get_label()]
    memory = [ln for ln in lines if ln not in capacity]
    assert len(memory) == len(result.recording.programs)
    assert len({ln.get_color() for ln in memory}) == len(memory)
    assert {ln.get_label().split()[0] for ln in capacity} == {"h800", "ascend-910b"}
    plt.close(fig)


def test_memory_is_reduced_to_its_peak_per_slice():
    points = [(i * 0.01, i % 7) for i in range(1000)]
    reduced, binned = pr.peak_per_bin(points, 10.0, bins=100)
    assert binned and len(reduced) == 100
    assert max(b for _, b in reduced) == 6
    assert pr.peak_per_bin(points[:10], 10.0, bins=100) == (points[:10], False)
