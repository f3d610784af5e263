"""Rich rendering of a plan for `polychip plan` (presentation only)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from polychip.plan.plan import Plan
from polychip.planner.summary import comparison, memory_rows, replica_rows


def money_line(plan: Plan) -> str:
    """Cost and energy per million tokens, or which figure is unknown and how to give it."""
    est = plan.estimate
    assert est is not None
    cost = (
        f"[bold]${est.cost_per_mtok:,.2f}[/bold] per million tokens (rent)"
        if est.cost_per_mtok is not None
        else "cost per million tokens unknown (set rent_usd_per_hour for "
        + _lacking(plan, "rent_per_hour")
        + ")"
    )
    energy = (
        f"[bold]{est.energy_kwh_per_mtok:,.2f} kWh[/bold] per million tokens (board power)"
        if est.energy_kwh_per_mtok is not None
        else f"energy unknown (set board_power_w for {_lacking(plan, 'board_power_w')})"
    )
    return f"{cost}; {energy}"


def _lacking(plan: Plan, figure: str) -> str:
    """The chips whose `figure` is unknown, as the cluster file names them."""
    names = {g.chip.name for g in plan.cluster.groups if getattr(g.economics, figure) is None}
    return ", ".join(sorted(names)) + " in the cluster file"


def render_plan(console: Console, plan: Plan, source: str, elapsed_s: float) -> None:
    est = plan.estimate
    assert est is not None
    cluster, job = plan.cluster, plan.job
    types = ", ".join(f"{g.num_devices} {g.chip.name}" for g in cluster.groups)
    console.print(
        f"[bold]{plan.model.name}[/bold] on [bold]{cluster.name}[/bold] ({source}): "
        f"{cluster.num_devices} chips ({types}); global batch {job.global_batch} x "
        f"{job.seq_len} tokens, {job.precision}, {plan.schedule}"
        + (f" v={plan.virtual_stages}" if plan.virtual_stages > 1 else "")
        + (", ZeRO-1" if plan.zero1 else "")
    )
    reps = Table(title="replicas (distinct pipeline shapes)")
    for col in ("count", "stages (in pipeline order)", "batch/replica", "micro-batches x size"):
        reps.add_column(col)
    for row in replica_rows(plan):
        reps.add_row(
            f"{row.count} x",
            "\n".join(row.stages),
            row.batch,
            f"{row.micro_batches} x {row.micro_batch_size}",
        )
    console.print(reps)
    how = " (cost model)" if est.source == "analytic" else ""
    console.print(
        f"{est.source} estimate{how}: step [bold]{est.step_time_s:.3f} s[/bold]  "
        f"[bold]{est.tokens_per_s:,.0f}[/bold] tokens/s  MFU [bold]{est.mfu:.1%}[/bold] of the "
        f"cluster's summed peak  (pipeline {est.breakdown_s.get('pipeline', 0):.3f} s, bubble "
        f"{est.bubble_fraction:.0%}; gradient sync {est.breakdown_s.get('dp_sync', 0):.3f} s; "
        f"optimizer {est.breakdown_s.get('optimizer', 0):.3f} s)"
    )
    console.print(money_line(plan))
    if any(v != "analytic" for v in est.sources.values()):
        console.print("figures: " + ", ".join(f"{k} {v}" for k, v in est.sources.items()))
    mem = Table(title="peak memory per chip type (worst device)")
    for col in ("chip", "peak GiB", "capacity GiB", "used"):
        mem.add_column(col, justify="right" if col != "chip" else "left")
    for chip, peak, cap in memory_rows(plan):
        mem.add_row(chip, f"{peak:.1f}", f"{cap:.0f}", f"{peak / cap:.0%}" if cap else "-")
    console.print(mem)
    cmp = Table(title=f"against the baselines (same cost model, {est.source})")
    for col in ("", "tokens/s", "plan / it", "what"):
        cmp.add_column(col, justify="right" if col in ("tokens/s", "plan / it") else "left")
    cmp.add_row("[bold]this plan[/bold]", f"{est.tokens_per_s:,.0f}", "1.00", "")
    for name, tokens, ratio, what in comparison(plan):
        cmp.add_row(
            name.replace("_", " "),
            f"{tokens:,.0f}" if tokens > 0 else "infeasible",
            "-" if ratio is None else f"{ratio:.2f}",
            what,
        )
    console.print(cmp)
    for note in plan.notes:
        console.print(f"note: {note}")
    console.print(f"planned in {elapsed_s:.1f} s")
