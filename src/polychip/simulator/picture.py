"""Timeline picture of a simulated step (PNG; matplotlib and numpy imported only here).

Top: one row per replayed stage (its TP devices and alike replicas share it), spans by
kind (`picture_rows.KINDS`: forward, backward, weight gradient (zb-h1), optimizer, gradient
sync, and waits by what they wait for); idle is the grey background. Large steps are drawn
in detail at their start and end only (`picture_rows.windows`). Middle: each row's share of
the whole step by kind. Bottom: each row's device memory over the step, one colour per row,
with each chip type's capacity. Each kind is one collection, so drawing costs little per
span.
"""

from __future__ import annotations

from pathlib import Path

from polychip.simulator import picture_rows as pr
from polychip.simulator.timeline import SimResult

MS = 1e3
GIB = 1024**3
MAX_MEMORY_LINES = 20  # tab20's distinct colours; beyond, the rows with the highest peak
CAPACITY_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def _bars(ax, spans_by_row: list[list[tuple]], colour_of: dict[str, str]) -> None:
    """One PolyCollection per kind: rectangles (start, end) ms at row y."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    for kind, colour in colour_of.items():
        boxes = [
            (y, s, e) for y, spans in enumerate(spans_by_row) for s, e, k in spans if k == kind
        ]
        if not boxes:
            continue
        a = np.asarray(boxes, dtype=float)
        y, x0, x1 = a[:, 0], a[:, 1] * MS, a[:, 2] * MS
        verts = np.stack(
            [np.stack([x0, y - 0.4], 1), np.stack([x0, y + 0.4], 1),
             np.stack([x1, y + 0.4], 1), np.stack([x1, y - 0.4], 1)], 1
        )
        ax.add_collection(PolyCollection(verts, facecolors=colour, linewidths=0), autolim=False)


def _timeline(axes: list, rows: list[pr.Row], wins: list[tuple[float, float]]) -> None:
    colours = {k: c for k, (_, c) in pr.KINDS.items()}
    for ax, (t0, t1) in zip(axes, wins, strict=True):
        background = [[(t0, t1, "idle")] for _ in rows]
        _bars(ax, background, {"idle": pr.IDLE[1]})
        _bars(ax, [pr.clip(r, t0, t1) for r in rows], colours)
        ax.set_xlim(t0 * MS, t1 * MS)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("time in the step (ms)")
    axes[0].set_yticks(range(len(rows)), [r.label for r in rows], fontsize=7)
    if len(wins) > 1:
        axes[0].set_title("start of the step (detail)", fontsize=9)
        axes[1].set_title("end of the step (detail)", fontsize=9)
        axes[1].tick_params(labelleft=False)


def _shares(ax, rows: list[pr.Row], step: float) -> None:
    left = [0.0] * len(rows)
    fractions = [pr.shares(r, step) for r in rows]
    for kind, (_, colour) in pr.KINDS.items():
        widths = [f[kind] for f in fractions]
        ax.barh(range(len(rows)), widths, left=left, color=colour, height=0.8, lw=0)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.barh(range(len(rows)), [max(0.0, 1 - a) for a in left], left=left, color=pr.IDLE[1],
            height=0.8, lw=0)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.set_title("share of the whole step per stage", fontsize=9)


def line_colours(n: int) -> list[tuple]:
    """n distinct colours: tab10, or tab20 with its dark shades first (neighbours differ)."""
    import matplotlib

    assert n <= MAX_MEMORY_LINES
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [matplotlib.colormaps["tab20"](i) for i in order[:n]]


def _memory(ax, result: SimResult, rows: list[pr.Row]) -> None:
    step = result.step_time_s
    peak = {r.prog: max(b for _, b in result.memory_timeline[r.prog]) for r in rows}
    shown = sorted(rows, key=lambda r: -peak[r.prog])[:MAX_MEMORY_LINES]
    shown = [r for r in rows if r in shown]  # back in row order
    reduced = False
    for r, colour in zip(shown, line_colours(len(shown)), strict=True):
        points, binned = pr.peak_per_bin(result.memory_timeline[r.prog], step)
        reduced |= binned
        points = [*points, (step, points[-1][1])]
        ax.step([t * MS for t, _ in points], [b / GIB for _, b in points], where="post",
                color=colour, lw=1.2, label=r.label)
    capacity = {st.chip: st.memory_capacity_bytes for st in result.stages}
    for i, (chip, cap) in enumerate(sorted(capacity.items())):
        ax.axhline(cap / GIB, color="black", lw=1, ls=CAPACITY_STYLES[i % len(CAPACITY_STYLES)],
                   label=f"{chip} capacity {cap / GIB:,.0f} GiB")
    ax.set_xlim(0, step * MS)
    ax.set_ylim(0, max(capacity.values()) / GIB * 1.08)
    ax.set_ylabel("memory per device (GiB)")
    ax.set_xlabel("time in the step (ms)")
    title = "device memory over the whole step" + (" (peak per slice)" if reduced else "")
    if len(shown) < len(rows):
        title += f" ({len(shown)} of {len(rows)} rows: the highest peaks)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(shown) // 25)


def _legend(fig, ax) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=text) for text, c in pr.KINDS.values()]
    handles.append(Patch(color=pr.IDLE[1], label=pr.IDLE[0]))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def write_png(result: SimResult, path: str | Path, budget: int = pr.DETAIL_EVENTS) -> str:
    """Write the picture; return '' or the note saying how it was aggregated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step, rows = result.step_time_s, pr.rows(result)
    wins = pr.windows(rows, step, budget)
    note = pr.aggregation_note(rows, wins, step)
    n = len(rows)
    heights = [max(2.0, 0.28 * n), max(1.5, 0.2 * n), 2.6]
    fig = plt.figure(figsize=(15, sum(heights) + 1.6))
    grid = fig.add_gridspec(3, len(wins), height_ratios=heights)
    top = [fig.add_subplot(grid[0, 0])]
    top += [fig.add_subplot(grid[0, i], sharey=top[0]) for i in range(1, len(wins))]
    _timeline(top, rows, wins)
    _legend(fig, top[-1])
    _shares(fig.add_subplot(grid[1, :]), rows, step)
    _memory(fig.add_subplot(grid[2, :]), result, rows)
    total = len(result.recording.programs)
    title = (
        f"simulated step {step * MS:,.1f} ms · {result.tokens_per_s:,.0f} tokens/s · "
        f"bubble {result.bubble_fraction:.0%} · {result.plan.schedule}"
        + ("" if n == total else f" · first {n} of {total} stages shown")
    )
    fig.suptitle(title + ("\n" + note if note else ""), fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return note
