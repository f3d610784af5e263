"""Timeline picture of a simulated step (PNG, matplotlib imported only here, Agg backend).

Top: one row per replayed stage (its TP devices, and its alike replicas, share the row):
forward, backward, optimizer, waiting for data, gradient all-reduce; idle is the grey
background. Bottom: each row's device memory over the step.
"""

from __future__ import annotations

from pathlib import Path

from polychip.simulator.timeline import SimResult

MAX_ROWS = 48
COLOURS = {
    "F": "#4C9BE8",  # forward
    "B": "#1F4E89",  # backward
    "OPT": "#2CA25F",  # optimizer
    "wait": "#F4B183",  # receive waits: communication on the critical path
    "AR": "#D6604D",  # gradient all-reduce
}


def _colour(token: str) -> str:
    if token == "OPT" or token.startswith("AR"):
        return COLOURS[token[:3] if token == "OPT" else "AR"]
    return COLOURS[token[0]] if token[0] in "FB" else COLOURS["wait"]


def write_png(result: SimResult, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rec, step = result.recording, result.step_time_s
    progs = rec.programs[:MAX_ROWS]
    size = {c.rep: len(c.members) for c in rec.classes}
    ms = 1e3
    height = 1.6 + 0.32 * len(progs) + 2.2
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(12, height),
        sharex=True,
        gridspec_kw={"height_ratios": [max(2.0, 0.32 * len(progs)), 2.2]},
    )
    labels = []
    for row, p in enumerate(progs):
        st = p.rep.stages[p.stage]
        alike = f" ×{size[p.replica]}" if size.get(p.replica, 1) > 1 else ""
        labels.append(
            f"R{p.replica}{alike} S{p.stage} {st.chip}" + (f" tp{st.tp}" if st.tp > 1 else "")
        )
        top.broken_barh([(0, step * ms)], (row - 0.4, 0.8), color="#EEEEEE")
        for start, end, token in p.waits + p.spans:
            top.broken_barh(
                [(start * ms, (end - start) * ms)], (row - 0.4, 0.8), color=_colour(token), lw=0
            )
    top.set_yticks(range(len(progs)), labels, fontsize=7)
    top.invert_yaxis()
    top.set_title(
        f"simulated step {step * ms:.1f} ms · {result.tokens_per_s:,.0f} tokens/s · "
        f"bubble {result.bubble_fraction:.0%} · {result.plan.schedule}"
        + ("" if len(progs) == len(rec.programs) else f" (first {len(progs)} stages shown)")
    )
    names = {"F": "forward", "B": "backward", "OPT": "optimizer", "wait": "waiting for data"}
    names["AR"] = "gradient all-reduce"
    handles = [Patch(color=COLOURS[k], label=v) for k, v in names.items()]
    handles.append(Patch(color="#EEEEEE", label="idle"))
    top.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=6, fontsize=7)
    gib = 1024**3
    for p, label in zip(progs[:12], labels, strict=False):
        points = result.memory_timeline[p.index] + [(step, result.memory_timeline[p.index][-1][1])]
        bottom.step(
            [t * ms for t, _ in points], [b / gib for _, b in points], where="post", label=label
        )
    bottom.set_ylabel("memory GiB")
    bottom.set_xlabel("time in the step (ms)")
    bottom.legend(fontsize=6, ncol=3, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
