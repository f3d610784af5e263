"""`polychip plan CLUSTER.yaml --model M`: search the fastest plan and print it beside its
baselines; `--out plan.json` writes it (docs/plan-format.md)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from polychip.cli.jobopts import add_run_options, job_from_args
from polychip.cli.profileopts import add_profile_option, profile_set

if TYPE_CHECKING:
    from rich.console import Console

    from polychip.planner import Candidate

DEFAULT_GLOBAL_BATCH = 512
DEFAULT_SEQ_LEN = 4096
DEFAULT_SIMULATE_TOP = 5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="plan the fastest way to train a model on a mixed cluster",
        description="Search the fastest plan (pipelines, layer split, TP, replicas, batch "
        "shares) for one training job on CLUSTER.yaml; print it beside the best single chip "
        "type, the naive mixed plan and the ideal, all on the same cost model.",
    )
    p.add_argument("cluster", help="cluster YAML file (see examples/clusters/)")
    p.add_argument(
        "--model", required=True, help="preset (llama3-70b, tiny, ...) or HF config.json"
    )
    p.add_argument(
        "--global-batch",
        type=int,
        default=DEFAULT_GLOBAL_BATCH,
        help=f"sequences per optimizer step (default {DEFAULT_GLOBAL_BATCH})",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=DEFAULT_SEQ_LEN,
        help=f"tokens per sequence (default {DEFAULT_SEQ_LEN})",
    )
    p.add_argument("--out", help="write the plan JSON here")
    p.add_argument("--exhaustive", action="store_true", help="slow exact search (small clusters)")
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="S",
        default=None,
        help="with --exhaustive: refuse (exit 2, before searching) a space estimated to need "
        "more than S seconds, and stop after S seconds with the best plan so far, labelled "
        "NOT PROVEN OPTIMAL (default 600)",
    )
    _add_schedule_options(p)
    p.add_argument(
        "--max-stages",
        type=int,
        default=None,
        help="most pipeline stages (default min(layers, 16))",
    )
    p.add_argument(
        "--simulate",
        action="store_true",
        help="re-rank the best candidates by a step replayed in the discrete-event simulator "
        f"(the {DEFAULT_SIMULATE_TOP} best by the cost model plus each chip type alone) and "
        "choose the fastest simulated; prints simulated beside analytic figures (the plan's "
        "estimate and baselines stay analytic)",
    )
    p.add_argument(
        "--simulate-top",
        type=int,
        metavar="K",
        default=None,
        help=f"candidates re-ranked by --simulate (default {DEFAULT_SIMULATE_TOP}; implies "
        "--simulate)",
    )
    p.add_argument(
        "--objective",
        choices=("throughput", "cost"),
        default="throughput",
        help="throughput: most tokens/s (default); cost: least US$ per million tokens at the "
        "chips' rent (every chip needs rent_usd_per_hour: catalog or cluster file)",
    )
    add_profile_option(p)
    add_run_options(p)
    p.set_defaults(func=run)


def _add_schedule_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--schedule",
        choices=("auto", "1f1b", "gpipe", "interleaved-1f1b", "zb-h1"),
        default="auto",
        help="pipeline schedule: auto (default) searches every schedule the runtime runs "
        "(1f1b, zb-h1, interleaved-1f1b) and keeps the fastest that fits; the others force "
        "one (docs/planner.md, Schedules)",
    )
    p.add_argument(
        "--virtual-stages",
        type=int,
        metavar="N",
        default=None,
        help="with --schedule interleaved-1f1b: model chunks per stage (default 2)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from polychip.cli.plan_view import render_plan
    from polychip.plan.serialize import save_plan
    from polychip.planner import search_plans
    from polychip.spec.cluster import load_cluster
    from polychip.spec.errors import PolychipError
    from polychip.spec.model import load_model

    cluster = load_cluster(args.cluster)
    model = load_model(args.model)
    job = job_from_args(args)
    if args.simulate_top is not None and args.simulate_top < 1:
        raise PolychipError(f"--simulate-top {args.simulate_top} must be >= 1")
    if args.time_limit is not None and not args.exhaustive:
        raise PolychipError(f"--time-limit {args.time_limit:g}: it bounds --exhaustive only; "
                            "add --exhaustive or drop --time-limit")
    top = args.simulate_top or (DEFAULT_SIMULATE_TOP if args.simulate else 0)
    for chip in cluster.chips():  # a missing peak for this precision: one clear error
        chip.peak_flops(job.precision)
    profile = profile_set(args, cluster, model, job)
    started = time.perf_counter()
    with _Progress() as progress:
        found = search_plans(
            cluster,
            model,
            job,
            exhaustive=args.exhaustive,
            max_stages=args.max_stages,
            schedule=args.schedule,
            progress=progress,
            simulate_top=top,
            profile=profile,
            objective=args.objective,
            virtual_stages=args.virtual_stages,
            **({} if args.time_limit is None else {"time_limit_s": args.time_limit}),
        )
    elapsed = time.perf_counter() - started
    plan = found.plan
    render_plan(Console(), plan, args.cluster, elapsed)
    if found.ranking:
        _print_ranking(Console(), found.ranking)
    if args.out:
        save_plan(plan, args.out)
        Console().print(f"plan written to {args.out}")
    return 0


def _print_ranking(console: Console, ranking: tuple[Candidate, ...]) -> None:
    from rich.table import Table

    from polychip.planner.rerank import differences

    table = Table(
        title="candidates re-ranked by simulated step (analytic: cost model; simulated: "
        "discrete-event replay)"
    )
    for col in ("", "rank", "analytic tok/s", "simulated tok/s", "sim/an"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("replicas (rank: by the cost model)")
    table.add_column("what differs (per distinct pipeline; stages in order)")
    differs = differences(list(ranking))
    for i, c in enumerate(ranking):
        table.add_row(
            "[bold]chosen[/bold]" if i == 0 else "",
            str(c.analytic_rank),
            f"{c.analytic_tokens_per_s:,.0f}",
            f"{c.simulated_tokens_per_s:,.0f}",
            f"{c.simulated_tokens_per_s / c.analytic_tokens_per_s:.3f}",
            c.label,
            differs[i],
        )
    console.print(table)
    chosen = ranking[0]
    est, sim = chosen.plan.estimate, chosen.sim
    assert est is not None  # the planner always fills it
    table = Table(title="chosen plan: analytic estimate vs simulated step")
    for col in ("figure", "analytic (cost model)", "simulated (event replay)"):
        table.add_column(col, justify="right")
    table.add_row("step time s", f"{est.step_time_s:.3f}", f"{sim.step_time_s:.3f}")
    table.add_row("tokens/s", f"{est.tokens_per_s:,.0f}", f"{sim.tokens_per_s:,.0f}")
    table.add_row("MFU", f"{est.mfu:.1%}", f"{sim.mfu:.1%}")
    table.add_row("bubble", f"{est.bubble_fraction:.1%}", f"{sim.bubble_fraction:.1%}")
    console.print(table)
    console.print(f"critical path (simulated): {sim.critical_path_text()}")


class _Progress:
    """A rich progress bar on stderr, shown once the search has run for a second."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.bar = None
        self.task = None

    def __enter__(self) -> _Progress:
        return self

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is None:
            if time.perf_counter() - self.start < 1.0:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("planning", total=1.0)
        self.bar.update(self.task, completed=fraction, description=message[:60])

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
