"""Printing what a run measured (shared by `train` and `demo`); no torch here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from polychip.plan.plan import Plan
    from polychip.runtime.metrics import RunSummary


def islands_line(plan: Plan, emulate: bool) -> str:
    from polychip.runtime.topology import islands, rank_roles

    roles = rank_roles(plan, emulate=emulate)
    parts = []
    for members in islands(roles):
        first = roles[members[0]]
        via = "" if first.island.endswith("/" + first.backend) else f" via {first.backend}"
        parts.append(f"{first.island}{via}: ranks {', '.join(map(str, members))}")
    return f"{len(parts)} island(s): " + " | ".join(parts)


def emulation_note(summary: RunSummary) -> str:
    if not summary.emulated:
        return "Speeds are this machine's own (no emulation)."
    d = f"{summary.dilation:g}"
    return (f"Chip speeds were EMULATED on this CPU: every compute phase lasted {d} x the cost "
            f"model's time for its chip, and each gradient all-reduce was followed by {d} x "
            f"its modelled time; chip-time figures = wall x {d}. Overruns (real work longer "
            f"than its slot): {summary.num_overruns} of {summary.num_phases} compute phases.")


def print_train_summary(console: Console, plan: Plan, summary: RunSummary) -> None:
    s = summary
    console.print(f"[bold]polychip train[/bold]: {s.world_size} ranks, "
                  f"{islands_line(plan, s.emulated)}; {s.steps} steps of "
                  f"{s.tokens_per_step:,} tokens")
    console.print(f"loss {s.loss_first:.3f} -> {s.loss_last:.3f}")
    table = Table(title="throughput (tokens/s" + (", emulated chip time)" if s.emulated
                                                  else ")"))
    for col in ("measured", "plan estimate", "measured / estimate", "ideal (sum of replicas)",
                "wall (this host)"):
        table.add_column(col, justify="right")
    est = s.estimate_tokens_per_s
    table.add_row(f"{s.tokens_per_s:,.0f}", "—" if est is None else f"{est:,.0f}",
                  "—" if not est else f"{s.tokens_per_s / est:.0%}",
                  f"{s.ideal_tokens_per_s:,.0f}", f"{s.wall_tokens_per_s:,.0f}")
    console.print(table)
    per = Table(title="per replica (median seconds per step, wall)")
    for col in ("replica", "chip", "samples", "compute s", "wait s"):
        per.add_column(col, justify="right" if col != "chip" else "left")
    for r in s.replicas:
        per.add_row(str(r.replica), r.chip, str(r.batch_share), f"{r.compute_s:.3f}",
                    f"{r.wait_s:.3f}")
    console.print(per)
    console.print(emulation_note(s))
