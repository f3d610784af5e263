"""Planner benchmark: plans vs baselines on the example clusters, fast vs exhaustive on
seeded random small clusters. Every figure comes from one run, side by side.

    PYTHONPATH=src python benchmarks/planner.py --json out/planner.json
    PYTHONPATH=src python benchmarks/planner.py --seeds 0   # the examples alone
    PYTHONPATH=src python benchmarks/planner.py --seeds 0 --schedule 1f1b   # the search alone

Each example's planning time is given as wall seconds and CPU seconds of this process
(`time.process_time`, one core): on a shared machine the CPU figure is the steadier one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from polychip.costmodel import CostModel
from polychip.planner import plan_job
from polychip.planner.exhaustive import Exhaustive
from polychip.planner.oracle import size_of
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.planner.space import max_stages_for
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [  # cluster file, model, global batch, sequence length
    ("cpu-test.yaml", "tiny", 16, 256),
    ("h800-910b.yaml", "llama3-70b", 512, 4096),
    ("a100-910b-mi300x.yaml", "llama3-70b", 512, 4096),
    ("mix-1024.yaml", "llama3-70b", 1024, 4096),
    ("mix-4096.yaml", "llama3-70b", 2048, 4096),
    # 65,536 chips: mix-4096 x 16 at the same 0.5 sequences per chip (global batch 32768), so
    # the two compare the planner's scaling, not another regime (examples/clusters/mix-65536)
    ("mix-65536.yaml", "llama3-70b", 32768, 4096),
]


def examples(only: list[str] | None = None, schedule: str = "auto") -> list[dict]:
    rows = []
    for cluster_file, model, batch, seq in EXAMPLES:
        if only and cluster_file.removesuffix(".yaml") not in only:
            continue
        cluster = load_cluster(ROOT / "examples" / "clusters" / cluster_file)
        start, cpu = time.perf_counter(), time.process_time()
        plan = plan_job(cluster, load_model(model), TrainingJob(batch, seq), schedule=schedule)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert plan.estimate is not None and plan.ideal is not None
        single = plan.baselines["best_single_type"].tokens_per_s
        naive = plan.baselines["naive_mixed"].tokens_per_s
        tokens = plan.estimate.tokens_per_s
        rows.append(
            {
                "cluster": cluster_file.removesuffix(".yaml"),
                "chips": cluster.num_devices,
                "model": model,
                "global_batch": batch,
                "seq_len": seq,
                "plan_tokens_per_s": tokens,
                "mfu": plan.estimate.mfu,
                "best_single_type_tokens_per_s": single,
                "naive_mixed_tokens_per_s": naive,
                "ideal_tokens_per_s": plan.ideal.tokens_per_s,
                "vs_best_single_type": tokens / single if single else None,
                "vs_naive_mixed": tokens / naive if naive else None,
                "vs_ideal": tokens / plan.ideal.tokens_per_s,
                "planner_wall_s": wall,
                "planner_cpu_s": cpu,
                "notes": list(plan.notes),
            }
        )
    return rows


def small(seeds: int, max_chips: int, max_stages: int | None, time_limit_s: float,
          first: int = 0) -> list[dict]:
    """Fast vs exhaustive; the oracle sizes itself first and refuses (as `plan --exhaustive`
    would) a space estimated above `time_limit_s`, and stops at it (not proven)."""
    rows = []
    for seed in range(first, first + seeds):
        cluster, model, job = random_case(seed, max_chips)
        cm = CostModel(cluster, model, job)
        groups = list(range(len(cluster.groups)))
        stages = max_stages_for(model, max_stages)
        start = time.perf_counter()
        fast = FastSearch(Scorer(ShapeBuilder(cm, "1f1b")), stages).run(groups)
        fast_s = time.perf_counter() - start
        start = time.perf_counter()
        size = size_of(Scorer(ShapeBuilder(cm, "1f1b")).builder, stages, groups)
        size_s = time.perf_counter() - start
        row = {
            "seed": seed,
            "cluster": " + ".join(
                f"{g.num_nodes}x{g.chips_per_node} {g.chip.name}" for g in cluster.groups
            ),
            "chips": cluster.num_devices,
            "model": model.name,
            "max_stages": stages,
            "global_batch": job.global_batch,
            "seq_len": job.seq_len,
            "fast_tokens_per_s": fast.tokens_per_s if fast else 0.0,
            "fast_wall_s": fast_s,
            "estimate_wall_s": size_s,
            "first_pass_shapes": size.first_pass_shapes,
            "first_pass_s": size.first_pass_s,
            "estimated_s": size.estimated_s,
            "accepted": size.estimated_s <= time_limit_s,
            "exhaustive_tokens_per_s": None,
            "ratio": None,
        }
        if row["accepted"]:
            start = time.perf_counter()
            oracle = Exhaustive(Scorer(ShapeBuilder(cm, "1f1b")), stages,
                                deadline=time.monotonic() + time_limit_s)
            exact = oracle.run(groups, incumbent=fast)
            e = exact.tokens_per_s if exact else 0.0
            row.update(
                exhaustive_tokens_per_s=e,
                ratio=row["fast_tokens_per_s"] / e if e else None,
                exhaustive_wall_s=time.perf_counter() - start,
                exhaustive_candidates=oracle.candidates,
                shapes_built=oracle.shapes_built,
                proven=oracle.proven,
            )
        rows.append(row)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--seeds", type=int, default=12,
                        help="random small clusters (0: the example clusters alone)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-chips", type=int, default=16)
    parser.add_argument("--max-stages", type=int, default=None,
                        help="for the small clusters (default: the planner's, min(layers, 16))")
    parser.add_argument("--time-limit", type=float, default=600.0,
                        help="the oracle's budget per cluster (refuse above, stop at it)")
    parser.add_argument("--skip-examples", action="store_true")
    parser.add_argument("--example", action="append", metavar="CLUSTER",
                        help="only this example cluster (e.g. mix-4096); repeatable")
    parser.add_argument("--schedule", default="auto",
                        help="the examples' --schedule (default auto; 1f1b: the search alone)")
    return parser


def _table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col in ("cluster", "model") else "right")
    return t


def _examples_table(rows: list[dict]) -> Table:
    t = _table("example clusters: plan vs baselines (tokens/s, same cost model)",
               ("cluster", "chips", "model", "plan", "MFU", "best single", "naive mixed",
                "ideal", "/single", "/naive", "/ideal", "wall s", "cpu s"))
    for r in rows:
        t.add_row(
            r["cluster"],
            str(r["chips"]),
            r["model"],
            f"{r['plan_tokens_per_s']:,.0f}",
            f"{r['mfu']:.1%}",
            f"{r['best_single_type_tokens_per_s']:,.0f}",
            f"{r['naive_mixed_tokens_per_s']:,.0f}",
            f"{r['ideal_tokens_per_s']:,.0f}",
            f"{r['vs_best_single_type']:.2f}",
            "-" if r["vs_naive_mixed"] is None else f"{r['vs_naive_mixed']:.2f}",
            f"{r['vs_ideal']:.2f}",
            f"{r['planner_wall_s']:.1f}",
            f"{r['planner_cpu_s']:.1f}",
        )
    return t


def _small_table(rows: list[dict], args: argparse.Namespace) -> Table:
    t = _table(f"fast vs exhaustive, random clusters <= {args.max_chips} chips, <= 3 types, "
               f"stages <= {args.max_stages or 'min(layers, 16)'}, oracle budget "
               f"{args.time_limit:g} s",
               ("seed", "cluster", "model", "batch", "stages", "fast", "est. s",
                "exhaustive", "ratio", "fast s", "exh. s", "built / 1st pass"))
    for r in rows:
        t.add_row(
            str(r["seed"]),
            r["cluster"],
            r["model"],
            str(r["global_batch"]),
            str(r["max_stages"]),
            f"{r['fast_tokens_per_s']:,.0f}",
            f"{r['estimated_s']:.3g}",
            "refused" if not r["accepted"] else f"{r['exhaustive_tokens_per_s']:,.0f}"
            + ("" if r["proven"] else " (not proven)"),
            "-" if r["ratio"] is None else f"{r['ratio']:.4f}",
            f"{r['fast_wall_s']:.2f}",
            "-" if not r["accepted"] else f"{r['exhaustive_wall_s']:.1f}",
            "-" if not r["accepted"] else f"{r['shapes_built'] / r['first_pass_shapes']:.2f}",
        )
    return t


def main() -> None:
    args = _parser().parse_args()
    console = Console()
    out: dict = {"examples": [], "small": []}
    if not args.skip_examples:
        out["examples"] = examples(args.example, args.schedule)
        console.print(_examples_table(out["examples"]))
    if args.seeds:
        out["small"] = small(args.seeds, args.max_chips, args.max_stages, args.time_limit,
                             args.first_seed)
        console.print(_small_table(out["small"], args))
        ratios = [r["ratio"] for r in out["small"] if r["ratio"] is not None]
        out["small_min_ratio"] = min(ratios) if ratios else None
        refused = sum(not r["accepted"] for r in out["small"])
        unproven = sum(r["accepted"] and not r["proven"] for r in out["small"])
        console.print(
            f"fast / exhaustive: min {min(ratios, default=float('nan')):.4f} over "
            f"{len(ratios)} accepted clusters ({unproven} stopped at the limit, not proven); "
            f"{refused} refused"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
