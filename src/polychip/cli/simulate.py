"""`polychip simulate PLAN.json`: replay one training step; print where the time goes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from polychip.cli.profileopts import add_profile_option, profile_set
from polychip.plan import Estimate, load_plan
from polychip.simulator import SimResult

GIB = 1024**3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="replay one training step of a plan, event by event")
    p.add_argument("plan", help="plan JSON file (from `polychip plan --out`)")
    p.add_argument("--trace", metavar="T.json", help="write a Chrome trace (open in Perfetto)")
    p.add_argument("--png", metavar="T.png", help="write a timeline picture")
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="start gradient all-reduces only after every pipeline's backward",
    )
    add_profile_option(p)
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON (the names of "
                   "`polychip estimate --json`, the replay's under `simulated`)")
    p.set_defaults(func=run)


def _summary(result: SimResult, analytic: Estimate, label: str) -> Table:
    sim = result.to_estimate()
    table = Table(title="one training step")
    table.add_column("")
    table.add_column("simulated", justify="right")
    table.add_column(label, justify="right")
    rows = [
        ("step time", lambda e: f"{e.step_time_s * 1e3:,.1f} ms"),
        ("tokens/s", lambda e: f"{e.tokens_per_s:,.0f}"),
        ("MFU", lambda e: f"{e.mfu:.1%}"),
        ("bubble", lambda e: f"{e.bubble_fraction:.1%}"),
    ]
    for name, fmt in rows:
        table.add_row(name, fmt(sim), fmt(analytic))
    for part in ("pipeline", "dp_sync", "optimizer"):
        name = {"dp_sync": "gradient sync (exposed)"}.get(part, part)
        a = analytic.breakdown_s.get(part)
        table.add_row(
            f"  {name}",
            f"{sim.breakdown_s[part] * 1e3:,.1f} ms",
            "—" if a is None else f"{a * 1e3:,.1f} ms",
        )
    return table


def _stages(result: SimResult) -> Table:
    table = Table(title="stages (per device; alike replicas share a row)")
    for col in ("replicas", "stage", "chip", "ranks", "busy", "peak act.", "peak memory"):
        table.add_column(col, justify="left" if col in ("replicas", "chip") else "right")
    for st in result.stages:
        reps = st.replicas
        who = ",".join(map(str, reps)) if len(reps) <= 3 else f"{reps[0]},{reps[1]},… ({len(reps)})"
        ranks = f"r{st.ranks[0]}" + (f"–r{st.ranks[-1]}" if st.tp > 1 else "")
        mem = f"{st.peak_memory_bytes / GIB:,.1f} / {st.memory_capacity_bytes / GIB:,.0f} GiB"
        over = st.peak_memory_bytes > st.memory_capacity_bytes
        table.add_row(
            who,
            str(st.stage),
            st.chip,
            ranks,
            f"{st.busy_fraction:.0%}",
            f"{st.peak_in_flight:g} mb",
            f"[red]{mem}[/red]" if over else mem,
        )
    return table


def _links(result: SimResult) -> Table:
    table = Table(title="links (seconds summed over transfers)")
    for col in ("kind", "transfers", "GB moved", "seconds"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for link in result.links:
        table.add_row(
            str(link.kind),
            f"{link.transfers:,}",
            f"{link.n_bytes / 1e9:,.2f}",
            f"{link.seconds:,.3f}",
        )
    return table


def run(args: argparse.Namespace) -> int:
    from polychip.planner.evaluate import evaluate_plan

    plan = load_plan(args.plan)
    profile = profile_set(args, plan.cluster, plan.model, plan.job)
    ev = evaluate_plan(plan, profile, simulate_step=True,
                       overlap_grad_sync=False if args.no_overlap else None)
    assert ev.sim is not None
    result, analytic = ev.sim, ev.estimate
    label = "analytic (cost model" + (" + profiles)" if profile else ")")
    console = Console()
    sync = "overlapped with backward" if ev.plan.job.overlap_grad_sync else "not overlapped"
    console.print(
        f"[bold]{args.plan}[/bold]: {len(plan.replicas)} replica(s), {plan.world_size} devices, "
        f"{plan.schedule}; gradient sync {sync}"
    )
    if ev.stored_differs:
        console.print(f"note: {ev.stored_differs}")
    console.print(_summary(result, analytic, label))
    console.print(_stages(result))
    console.print(_links(result))
    console.print(f"critical path: {result.critical_path_text()}")
    if profile:
        console.print("figures: " + ", ".join(f"{k} {v}" for k, v in ev.sources.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(ev.to_dict(), indent=1) + "\n")
        console.print(f"wrote {args.json}")
    if args.trace:
        from polychip.simulator.trace import write_trace

        count = write_trace(result, args.trace)
        console.print(f"wrote {args.trace} ({count:,} events; open it in https://ui.perfetto.dev)")
    if args.png:
        from polychip.simulator.picture import write_png

        note = write_png(result, args.png)
        console.print(f"wrote {args.png}" + (f" ({note})" if note else ""))
    return 0
