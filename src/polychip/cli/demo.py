"""`polychip demo`: plan a built-in mixed cluster of 4 emulated chips (3 vendors, speeds
1 : 1 : 2 : 4), train the tiny model on the Python standard library's sources with the plan
and with the naive even split of the same replicas, and compare: loss, tokens/s, estimate."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from polychip.cli.runreport import emulation_note, islands_line
from polychip.spec.cluster import Cluster, load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import PRESETS

DEMO_CLUSTER = "examples/cpu-test.yaml"  # package data; examples/clusters/cpu-test.yaml
# fp32: the emulated chips' real arithmetic runs on this CPU, where bf16 matrix products are
# slower than fp32 ones (the fictional chips' fp32 and bf16 peaks are equal)
DEMO_JOB = TrainingJob(global_batch=32, seq_len=128, precision="fp32")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="plan and train a built-in 4-chip mixed cluster (emulated)")
    p.add_argument("--steps", type=int, default=30,
                   help="steps with the polychip plan (default 30; the even split runs half)")
    p.add_argument("--json", metavar="SUMMARY.json", help="write the figures as JSON")
    p.add_argument("--dilation", type=float, metavar="X",
                   help="emulation dilation (default: from a timed warm-up)")
    p.set_defaults(func=run)


def demo_cluster() -> Cluster:
    with resources.as_file(resources.files("polychip").joinpath(DEMO_CLUSTER)) as path:
        return load_cluster(path)


def run(args: argparse.Namespace) -> int:
    from polychip.planner import plan_job
    from polychip.runtime.compare import CompareTask, even_batch_split
    from polychip.runtime.launch import launch_local
    from polychip.runtime.session import estimate_tokens_per_s
    from polychip.runtime.train import TrainConfig

    console = Console()
    cluster, model = demo_cluster(), PRESETS["tiny"]
    console.print(f"[bold]polychip demo[/bold]: cluster {cluster.name!r} — "
                  + ", ".join(f"{g.num_devices} x {g.chip.name} ({g.chip.vendor})"
                              for g in cluster.groups)
                  + f"; model {model.name} ({model.num_params / 1e6:.2f} M parameters), "
                  f"{DEMO_JOB.global_batch} x {DEMO_JOB.seq_len} tokens per step")
    plan = plan_job(cluster, model, DEMO_JOB, max_stages=1)
    even = even_batch_split(plan)
    console.print(f"plan: batch shares {_shares(plan)} (even split: {_shares(even)}); "
                  f"{islands_line(plan, True)}")
    steps = max(args.steps, 2)
    config = TrainConfig(steps=steps, emulate=True, dilation=args.dilation, progress=True)
    task = CompareTask((plan, even), (steps, max(2, steps // 2)), config,
                       progress_labels=("polychip plan", "even split"))
    planned, naive = launch_local(plan, task)[0]
    figures = _figures(plan, even, planned, naive, estimate_tokens_per_s)
    _print(console, figures)
    console.print(emulation_note(planned))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
        console.print(f"figures: {args.json}")
    return 0


def _shares(plan: Any) -> str:
    return "/".join(f"{r.batch_size}" for r in plan.replicas)


def _figures(plan: Any, even: Any, planned: Any, naive: Any, estimate: Any) -> dict[str, Any]:
    theoretical = estimate(plan) / estimate(even)
    measured = planned.tokens_per_s / naive.tokens_per_s
    common = min(len(planned.losses), len(naive.losses))
    return {
        "emulated": True,
        "dilation_start": planned.dilation_start,
        "dilation": max(planned.dilation or 0.0, naive.dilation or 0.0),
        "chips": [r.stages[0].chip for r in plan.replicas],
        "shares_planned": [r.batch_size for r in plan.replicas],
        "shares_even": [r.batch_size for r in even.replicas],
        "steps_planned": planned.steps,
        "steps_even": naive.steps,
        "planned_tokens_per_s": planned.tokens_per_s,
        "even_tokens_per_s": naive.tokens_per_s,
        "estimate_tokens_per_s": estimate(plan),
        "even_estimate_tokens_per_s": estimate(even),
        "ideal_tokens_per_s": plan.ideal.tokens_per_s if plan.ideal else None,
        "theoretical_speedup": theoretical,
        "measured_speedup": measured,
        "speedup_vs_theoretical": measured / theoretical,
        "planned_wall_tokens_per_s": planned.wall_tokens_per_s,
        "even_wall_tokens_per_s": naive.wall_tokens_per_s,
        "loss_first": planned.loss_first,
        "loss_last": planned.loss_last,
        "losses": list(planned.losses),
        # the split never changes the mathematics: both runs see the same losses
        "max_loss_difference_even_vs_planned": max(
            abs(a - b) for a, b in zip(planned.losses[:common], naive.losses[:common],
                                       strict=True)),
        "overruns": planned.num_overruns + naive.num_overruns,
        "phases": planned.num_phases + naive.num_phases,
        "emulation_lost_fraction": max(planned.lost_fraction, naive.lost_fraction),
    }


def _print(console: Console, f: dict[str, Any]) -> None:
    losses = f["losses"]
    marks = sorted({round(i * (len(losses) - 1) / 7) for i in range(8)})
    console.print("loss: " + "  ".join(f"[dim]{i}:[/dim]{losses[i]:.2f}" for i in marks)
                  + f"  (even split, same steps: max difference "
                    f"{f['max_loss_difference_even_vs_planned']:.1e})")
    table = Table(title="tokens/s (run: emulated chip time; wall: measured on this host)")
    for col in ("", "batch shares", "run", "estimate", "wall"):
        table.add_column(col, justify="left" if col in ("", "batch shares") else "right")
    table.add_row("polychip plan", "/".join(map(str, f["shares_planned"])),
                  f"{f['planned_tokens_per_s']:,.0f}", f"{f['estimate_tokens_per_s']:,.0f}",
                  f"{f['planned_wall_tokens_per_s']:,.0f}")
    table.add_row("even split", "/".join(map(str, f["shares_even"])),
                  f"{f['even_tokens_per_s']:,.0f}", f"{f['even_estimate_tokens_per_s']:,.0f}",
                  f"{f['even_wall_tokens_per_s']:,.0f}")
    if f["ideal_tokens_per_s"]:
        table.add_row("ideal (sum of chips)", "", "", f"{f['ideal_tokens_per_s']:,.0f}", "")
    table.add_row("[bold]speed-up[/bold]", "", f"[bold]{f['measured_speedup']:.2f}x[/bold]",
                  f"{f['theoretical_speedup']:.2f}x", "")
    console.print(table)
