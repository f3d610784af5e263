"""`polychip estimate PLAN.json [--profile FILE ...] [--simulate] [--json OUT]`: evaluate
any plan as it stands (searched or written by hand): step time, phases, memory per device,
whether it fits, and which figures were measured (docs/plan-format.md, "Evaluating a
plan")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from polychip.cli.profileopts import add_profile_option, profile_set
from polychip.planner.evaluate import Evaluation, StepFigures

GIB = 1024**3
MAX_DEVICE_ROWS = 16
PHASES = (("compute_s", "  compute (busiest device)"), ("pipeline_wait_s", "  pipeline wait"),
          ("grad_sync_s", "  gradient sync (exposed)"), ("optimizer_s", "  optimizer"),
          ("idle_s", "  host work (idle)"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "estimate", help="evaluate a plan (also hand-written): step, phases, memory, fits",
        description="Recompute a plan's estimate on the cost model (with measured profiles "
        "where given) and say whether every device fits its memory.",
    )
    p.add_argument("plan", help="plan JSON file (from `polychip plan --out`, or by hand)")
    add_profile_option(p)
    p.add_argument("--simulate", action="store_true",
                   help="also replay the step in the discrete-event simulator")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON here")
    p.set_defaults(func=run)


def _step_table(ev: Evaluation, label: str) -> Table:
    cols = [("analytic", ev.analytic)] + ([("simulated", ev.simulated)] if ev.simulated else [])
    table = Table(title=f"one training step ({label})")
    table.add_column("")
    for name, _ in cols:
        table.add_column(name, justify="right")

    def row(name: str, fmt) -> None:
        table.add_row(name, *(fmt(f) for _, f in cols))

    row("step time", lambda f: f"{f.step_time_s * 1e3:,.2f} ms")
    row("tokens/s", lambda f: f"{f.tokens_per_s:,.0f}")
    for key, name in PHASES:
        row(name, lambda f, k=key: f"{f.phases.get(k, 0.0) * 1e3:,.2f} ms")
    row("fits memory", lambda f: "yes" if f.fits else "[red]NO[/red]")
    return table


def _device_table(ev: Evaluation) -> Table:
    sim = ev.simulated
    table = Table(title="peak memory per device (alike neighbours share a row)")
    for col in ("ranks", "chip", "analytic GiB", *(["simulated GiB"] if sim else []),
                "capacity GiB"):
        table.add_column(col, justify="left" if col in ("ranks", "chip") else "right")
    rows: list[list] = []
    for i, d in enumerate(ev.analytic.devices):
        key = (d.chip, d.peak_memory_bytes, sim and sim.devices[i].peak_memory_bytes,
               d.capacity_bytes)
        if rows and rows[-1][1] == key:
            rows[-1][0][1] = d.rank
        else:
            rows.append([[d.rank, d.rank], key])
    for (a, b), (chip, peak, sim_peak, cap) in rows[:MAX_DEVICE_ROWS]:
        over = "[red]{}[/red]" if peak > cap else "{}"
        cells = [f"r{a}" + (f"–r{b}" if b > a else ""), chip, over.format(f"{peak / GIB:,.2f}")]
        if sim:
            cells.append(f"{sim_peak / GIB:,.2f}")
        table.add_row(*cells, f"{cap / GIB:,.1f}")
    if len(rows) > MAX_DEVICE_ROWS:
        table.caption = f"{len(rows) - MAX_DEVICE_ROWS} more rows: see --json"
    return table


def _limits(console: Console, figures: tuple[tuple[str, StepFigures | None], ...]) -> None:
    for name, f in figures:
        if f is not None and f.limit:
            console.print(f"[red]does not fit ({name})[/red]: {f.limit}")


def run(args: argparse.Namespace) -> int:
    from polychip.plan import load_plan
    from polychip.planner.evaluate import evaluate_plan

    plan = load_plan(args.plan)
    profile = profile_set(args, plan.cluster, plan.model, plan.job)
    ev = evaluate_plan(plan, profile, simulate_step=args.simulate)
    console = Console()
    label = "cost model" + (f" + {len(args.profile)} profile(s)" if args.profile else "")
    console.print(f"[bold]{args.plan}[/bold]: {len(plan.replicas)} replica(s), "
                  f"{plan.world_size} devices, {plan.schedule}")
    if ev.stored_differs:
        console.print(f"note: {ev.stored_differs}")
    console.print(_step_table(ev, label))
    _limits(console, (("analytic", ev.analytic), ("simulated", ev.simulated)))
    console.print(_device_table(ev))
    console.print("figures: " + ", ".join(f"{k} {v}" for k, v in ev.sources.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(ev.to_dict(), indent=1) + "\n")
        console.print(f"wrote {args.json}")
    return 0
