"""Planner benchmark: plans vs baselines on the example clusters, fast vs exhaustive on
seeded random small clusters. Every figure comes from one run, side by side.

    PYTHONPATH=src python benchmarks/planner.py --json out/planner.json
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
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
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
]


def examples() -> list[dict]:
    rows = []
    for cluster_file, model, batch, seq in EXAMPLES:
        cluster = load_cluster(ROOT / "examples" / "clusters" / cluster_file)
        start, cpu = time.perf_counter(), time.process_time()
        plan = plan_job(cluster, load_model(model), TrainingJob(batch, seq))
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


def small(seeds: int, max_chips: int, max_stages: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        cluster, model, job = random_case(seed, max_chips)
        cm = CostModel(cluster, model, job)
        groups = list(range(len(cluster.groups)))
        start = time.perf_counter()
        fast = FastSearch(Scorer(ShapeBuilder(cm, "1f1b")), max_stages).run(groups)
        fast_s = time.perf_counter() - start
        start = time.perf_counter()
        oracle = Exhaustive(Scorer(ShapeBuilder(cm, "1f1b")), max_stages)
        exact = oracle.run(groups, incumbent=fast)
        exact_s = time.perf_counter() - start
        f = fast.tokens_per_s if fast else 0.0
        e = exact.tokens_per_s if exact else 0.0
        rows.append(
            {
                "seed": seed,
                "cluster": " + ".join(
                    f"{g.num_nodes}x{g.chips_per_node} {g.chip.name}" for g in cluster.groups
                ),
                "chips": cluster.num_devices,
                "model": model.name,
                "global_batch": job.global_batch,
                "seq_len": job.seq_len,
                "fast_tokens_per_s": f,
                "exhaustive_tokens_per_s": e,
                "ratio": f / e if e else None,
                "fast_wall_s": fast_s,
                "exhaustive_wall_s": exact_s,
                "exhaustive_candidates": oracle.candidates,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--seeds", type=int, default=12, help="random small clusters")
    parser.add_argument("--max-chips", type=int, default=32)
    parser.add_argument("--max-stages", type=int, default=2, help="for the small clusters")
    parser.add_argument("--skip-examples", action="store_true")
    args = parser.parse_args()
    console = Console()
    out: dict = {"examples": [], "small": []}
    if not args.skip_examples:
        out["examples"] = examples()
        t = Table(title="example clusters: plan vs baselines (tokens/s, same cost model)")
        for col in (
            "cluster",
            "chips",
            "model",
            "plan",
            "MFU",
            "best single",
            "naive mixed",
            "ideal",
            "/single",
            "/naive",
            "/ideal",
            "wall s",
        ):
            t.add_column(col, justify="left" if col in ("cluster", "model") else "right")
        for r in out["examples"]:
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
            )
        console.print(t)
    if args.seeds:
        out["small"] = small(args.seeds, args.max_chips, args.max_stages)
        t = Table(
            title=f"fast vs exhaustive, random clusters <= {args.max_chips} chips, "
            f"<= 3 types, max {args.max_stages} stages"
        )
        for col in (
            "seed",
            "cluster",
            "model",
            "batch",
            "fast",
            "exhaustive",
            "ratio",
            "fast s",
            "exh. s",
        ):
            t.add_column(col, justify="left" if col in ("cluster", "model") else "right")
        for r in out["small"]:
            t.add_row(
                str(r["seed"]),
                r["cluster"],
                r["model"],
                str(r["global_batch"]),
                f"{r['fast_tokens_per_s']:,.0f}",
                f"{r['exhaustive_tokens_per_s']:,.0f}",
                "-" if r["ratio"] is None else f"{r['ratio']:.4f}",
                f"{r['fast_wall_s']:.2f}",
                f"{r['exhaustive_wall_s']:.1f}",
            )
        console.print(t)
        ratios = [r["ratio"] for r in out["small"] if r["ratio"] is not None]
        out["small_min_ratio"] = min(ratios) if ratios else None
        console.print(f"fast / exhaustive: min {min(ratios):.4f} over {len(ratios)} clusters")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
