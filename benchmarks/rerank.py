"""`polychip plan --simulate`: what re-ranking the best candidates by a simulated step
changes, and what it costs, on the example clusters.

    PYTHONPATH=src python benchmarks/rerank.py [--top 5] [--json OUT.json]

For each case, side by side in one process: the plain search (`simulate_top=0`) and the
search with re-ranking. Reported: the analytic favourite's analytic and simulated tokens/s,
the chosen plan's, the simulated gain of re-ranking (chosen / favourite, both simulated)
and the wall time of both searches.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from polychip.planner import search_plans
from polychip.planner.samples import SMALL8
from polychip.spec.cluster import cluster_from_dict, load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[1]
# Four H20 on one node, two H800 on two nodes behind 25 Gbit/s NICs: a pipeline through
# both H800 nodes makes the middle node's NIC carry both boundaries (tests/planner/test_rerank).
SHARED_NIC = {
    "name": "shared-nic",
    "nodes": [
        {"chip": "h20", "count": 1, "chips_per_node": 4, "nic_gbps": 100},
        {"chip": "h800", "count": 2, "chips_per_node": 1, "nic_gbps": 25},
    ],
    "network": {"kind": "roce", "latency_us": 10},
}
CASES = [  # cluster, model, global batch, seq len (as benchmarks/planner.py)
    ("shared-nic", "small8", 16, 8192),
    ("cpu-test", "tiny", 16, 64),
    ("cpu-test", "tiny", 16, 256),
    ("h800-910b", "llama3-70b", 512, 4096),
    ("a100-910b-mi300x", "llama3-70b", 512, 4096),
    ("mix-1024", "llama3-70b", 1024, 4096),
    ("mix-4096", "llama3-70b", 2048, 4096),
]


def run_case(name: str, model: str, batch: int, seq: int, top: int) -> dict:
    if name == SHARED_NIC["name"]:
        cluster = cluster_from_dict(SHARED_NIC)
    else:
        cluster = load_cluster(ROOT / "examples" / "clusters" / f"{name}.yaml")
    spec = SMALL8 if model == SMALL8.name else load_model(model)
    job = TrainingJob(global_batch=batch, seq_len=seq)
    t0 = time.perf_counter()
    search_plans(cluster, spec, job)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = search_plans(cluster, spec, job, simulate_top=top)
    rerank_s = time.perf_counter() - t0
    chosen = found.ranking[0]
    first = min(found.ranking, key=lambda c: c.analytic_rank)
    return {
        "case": f"{name} / {model} / {batch} x {seq}",
        "candidates": len(found.ranking),
        "favourite_analytic": first.analytic_tokens_per_s,
        "favourite_simulated": first.simulated_tokens_per_s,
        "chosen_rank": chosen.analytic_rank,
        "chosen_analytic": chosen.analytic_tokens_per_s,
        "chosen_simulated": chosen.simulated_tokens_per_s,
        "gain": chosen.simulated_tokens_per_s / first.simulated_tokens_per_s,
        "plain_s": plain_s,
        "rerank_s": rerank_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=5, help="candidates by the cost model (5)")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    args = ap.parse_args()
    rows = []
    print(
        "| case | candidates | favourite analytic | favourite simulated | chosen (analytic rank) "
        "| chosen analytic | chosen simulated | simulated gain | plan s | plan --simulate s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        r = run_case(*case, top=args.top)
        rows.append(r)
        print(
            f"| {r['case']} | {r['candidates']} | {r['favourite_analytic']:,.0f} | "
            f"{r['favourite_simulated']:,.0f} | {r['chosen_rank']} | {r['chosen_analytic']:,.0f} "
            f"| {r['chosen_simulated']:,.0f} | {r['gain']:.3f} | {r['plain_s']:.1f} | "
            f"{r['rerank_s']:.1f} |",
            flush=True,
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
