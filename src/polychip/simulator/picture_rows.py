"""What the timeline picture draws, without drawing it (no matplotlib here).

Each replayed stage is a row of spans of one *kind*. Waits are split by what they wait
for: a receive waits first for the other stage to produce the data (its forward, or its
backward), then for the transfer in flight; an all-reduce waits first for the other
holders of its segment to finish their backward, then runs. Beyond `DETAIL_EVENTS` spans
the picture draws a window at the start and one at the end of the step in detail and
summarises the whole step per row (`windows`, `shares`).
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.simulator.state import Prog
from polychip.simulator.timeline import SimResult

DETAIL_EVENTS = 3000  # spans drawn one by one; beyond this the picture aggregates
MAX_ROWS = 48

# kind -> (legend text, colour); legend order
KINDS: dict[str, tuple[str, str]] = {
    "F": ("forward", "#56B4E9"),
    "B": ("backward (zb-h1: input gradient)", "#5E3C99"),
    "W": ("weight gradient (zb-h1, deferred)", "#B2ABD2"),
    "OPT": ("optimizer step", "#1B9E77"),
    "AR": ("gradient sync (all-reduce running)", "#D62728"),
    "wait_up": ("waiting for earlier stages (activations)", "#FDB863"),
    "wait_down": ("waiting for later stages (the gradient back)", "#A6761D"),
    "wait_link": ("waiting for a transfer in flight (link)", "#FFE066"),
    "wait_sync": ("waiting for other stages' backward (before gradient sync)", "#F7B6D2"),
}
IDLE = ("idle", "#EEEEEE")


@dataclass(frozen=True)
class Row:
    prog: int  # replayed program index (SimResult.memory_timeline's key)
    label: str
    chip: str
    spans: tuple[tuple[float, float, str], ...]  # (start, end, kind), by start


def wait_spans(since: float, end: float, token: str, began: float) -> list[tuple]:
    if token.startswith("AR"):
        first, second = "wait_sync", "AR"
    else:
        first, second = ("wait_up" if token.startswith("RA") else "wait_down"), "wait_link"
    out = []
    if began > since:
        out.append((since, began, first))
    if end > began:
        out.append((began, end, second))
    return out


def prog_spans(p: Prog) -> list[tuple[float, float, str]]:
    """A program's spans, waits split by what they wait for, sorted by start."""
    out = [(s, e, "OPT" if tok == "OPT" else tok[0]) for s, e, tok in p.spans]
    began = p.wait_began if len(p.wait_began) == len(p.waits) else [w[0] for w in p.waits]
    for (since, end, token), b in zip(p.waits, began, strict=True):
        out.extend(wait_spans(since, end, token, b))
    out.sort()
    return out


def rows(result: SimResult) -> list[Row]:
    rec = result.recording
    size = {c.rep: len(c.members) for c in rec.classes}
    out = []
    for p in rec.programs[:MAX_ROWS]:
        st = p.rep.stages[p.stage]
        alike = f" ×{size[p.replica]}" if size.get(p.replica, 1) > 1 else ""
        tp = f" tp{st.tp}" if st.tp > 1 else ""
        layers = f" L{st.layer_start}-{st.layer_end - 1}"
        label = f"R{p.replica}{alike} S{p.stage} {st.chip}{tp}{layers}"
        out.append(Row(p.index, label, st.chip, tuple(prog_spans(p))))
    return out


def windows(rs: list[Row], step: float, budget: int = DETAIL_EVENTS) -> list[tuple[float, float]]:
    """[(0, step)] when every span fits the budget; else a window at the start and one at
    the end of the step, each holding about half the budget."""
    total = sum(len(r.spans) for r in rs)
    if total <= budget:
        return [(0.0, step)]
    half = budget // 2
    starts = sorted(s for r in rs for s, _, _ in r.spans)
    ends = sorted((e for r in rs for _, e, _ in r.spans), reverse=True)
    head, tail = starts[half], ends[half]
    if head >= tail:
        return [(0.0, step)]
    return [(0.0, head), (tail, step)]


def clip(row: Row, t0: float, t1: float) -> list[tuple[float, float, str]]:
    return [(max(s, t0), min(e, t1), k) for s, e, k in row.spans if e > t0 and s < t1]


def shares(row: Row, step: float) -> dict[str, float]:
    """Fraction of the step in each kind (idle: the rest)."""
    out = dict.fromkeys(KINDS, 0.0)
    for s, e, k in row.spans:
        out[k] += e - s
    return {k: v / step for k, v in out.items()} if step > 0 else out


def micro_batches_in(row: Row, t0: float, t1: float) -> int:
    """Forwards of this row that start inside [t0, t1)."""
    return sum(1 for s, _, k in row.spans if k == "F" and t0 <= s < t1)


def aggregation_note(rs: list[Row], wins: list[tuple[float, float]], step: float) -> str:
    """'' when drawn in full; else what the detail windows show (for title and CLI)."""
    if len(wins) == 1:
        return ""
    total = sum(len(r.spans) for r in rs)
    (_, h), (t, _) = wins
    first = micro_batches_in(rs[0], 0.0, h)
    last = micro_batches_in(rs[0], t, step)
    return (
        f"aggregated: {total:,} spans; detail for the first {h * 1e3:,.0f} ms (stage 0: "
        f"{first} micro-batches) and the last {(step - t) * 1e3:,.0f} ms ({last}); "
        "the bars summarise the whole step per stage"
    )


def peak_per_bin(
    points: list[tuple[float, int]], step: float, bins: int = 300
) -> tuple[list[tuple[float, int]], bool]:
    """A step function (time, bytes) reduced to its peak in each of `bins` equal slices of
    the step when it has more points than that; True when reduced."""
    if len(points) <= 2 * bins or step <= 0:
        return points, False
    peaks: list[int | None] = [None] * bins
    held = points[0][1]
    nxt = 0
    for i in range(bins):
        end = (i + 1) * step / bins
        top = held
        while nxt < len(points) and points[nxt][0] < end:
            held = points[nxt][1]
            top = max(top, held)
            nxt += 1
        peaks[i] = top
    return [(i * step / bins, int(p)) for i, p in enumerate(peaks)], True
