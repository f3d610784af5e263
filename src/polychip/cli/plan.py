"""`polychip plan CLUSTER.yaml --model M`: search the fastest plan and print it beside its
baselines; `--out plan.json` writes it (docs/plan-format.md)."""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_GLOBAL_BATCH = 512
DEFAULT_SEQ_LEN = 4096


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
    p.add_argument("--precision", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--no-recompute", action="store_true", help="forbid activation recompute")
    p.add_argument("--no-zero1", action="store_true", help="forbid ZeRO-1 optimizer sharding")
    p.add_argument("--schedule", choices=("1f1b", "gpipe"), default="1f1b")
    p.add_argument(
        "--max-stages",
        type=int,
        default=None,
        help="most pipeline stages (default min(layers, 16))",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from polychip.cli.plan_view import render_plan
    from polychip.plan.serialize import save_plan
    from polychip.planner import plan_job
    from polychip.spec.cluster import load_cluster
    from polychip.spec.job import TrainingJob
    from polychip.spec.model import load_model

    cluster = load_cluster(args.cluster)
    model = load_model(args.model)
    job = TrainingJob(
        global_batch=args.global_batch,
        seq_len=args.seq_len,
        precision=args.precision,
        allow_recompute=not args.no_recompute,
        allow_zero1=not args.no_zero1,
    )
    for chip in cluster.chips():  # a missing peak for this precision: one clear error
        chip.peak_flops(job.precision)
    started = time.perf_counter()
    with _Progress() as progress:
        plan = plan_job(
            cluster,
            model,
            job,
            exhaustive=args.exhaustive,
            max_stages=args.max_stages,
            schedule=args.schedule,
            progress=progress,
        )
    elapsed = time.perf_counter() - started
    render_plan(Console(), plan, args.cluster, elapsed)
    if args.out:
        save_plan(plan, args.out)
        Console().print(f"plan written to {args.out}")
    return 0


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
