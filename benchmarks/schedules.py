"""Pipeline schedules on the example clusters: the plan under 1F1B beside the searched
schedule, side by side in one process.

    PYTHONPATH=src python benchmarks/schedules.py [--json OUT.json] [--no-simulate]

For each case: `plan_job(schedule="1f1b")`; the schedule search as polychip's runtime runs
today (`auto`: 1f1b and interleaved-1f1b); the search with zb-h1 also allowed (the runtime
that executes it); and zb-h1 forced (its own search, layers split for its memory). Reported:
the schedule chosen, tokens/s, the bubble fraction of the closed form and of the event
replay, the ratio to the compute ceiling (`plan.limit`), and wall seconds of the search and
of the replay. Figures are the cost model's and the simulator's, not measured hardware; the
schedule notes of the search with zb-h1 say why each schedule won or lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from polychip.plan.capabilities import RUNTIME
from polychip.planner import plan_job
from polychip.simulator import simulate
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # cluster, model, global batch, seq len
    ("h800-910b", "llama3-70b", 512, 4096),
    ("mix-1024", "llama3-70b", 1024, 4096),
    ("mix-4096", "llama3-70b", 2048, 4096),
]
WITH_ZB = dataclasses.replace(RUNTIME, schedules=RUNTIME.schedules | {"zb-h1"})
SEARCHES = [  # label, plan_job keyword arguments
    ("1f1b", {"schedule": "1f1b"}),
    ("searched (runtime today)", {}),
    ("searched (+ zb-h1)", {"capabilities": WITH_ZB}),
    ("zb-h1 forced", {"schedule": "zb-h1", "capabilities": WITH_ZB}),
]


def run_one(cluster, model, job, kwargs: dict, replay: bool) -> dict:
    t0 = time.perf_counter()
    plan = plan_job(cluster, model, job, **kwargs)
    plan_s = time.perf_counter() - t0
    est = plan.estimate
    assert est is not None and plan.limit is not None
    row = {
        "schedule": plan.schedule + (f" v={plan.virtual_stages}" if plan.virtual_stages > 1
                                     else ""),
        "tokens_per_s": est.tokens_per_s,
        "bubble": est.bubble_fraction,
        "ceiling_ratio": est.tokens_per_s / plan.limit.tokens_per_s,
        "step_s": est.step_time_s,
        "plan_s": plan_s,
        "notes": [n for n in plan.notes if n.startswith(("schedule ", "1f1b", "zb-h1",
                                                         "interleaved"))],
    }
    if replay:
        t0 = time.perf_counter()
        sim = simulate(plan)
        row |= {"sim_tokens_per_s": sim.tokens_per_s, "sim_bubble": sim.bubble_fraction,
                "sim_s": time.perf_counter() - t0}
    return row


def fmt(case: str, label: str, r: dict) -> str:
    sim = (f"{r['sim_tokens_per_s']:,.0f} | {r['sim_bubble']:.1%} | {r['sim_s']:.1f}"
           if "sim_s" in r else "- | - | -")
    return (f"| {case} | {label} | {r['schedule']} | {r['tokens_per_s']:,.0f} | "
            f"{r['bubble']:.1%} | {r['ceiling_ratio']:.3f} | {sim} | {r['plan_s']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    ap.add_argument("--no-simulate", action="store_true", help="skip the event replays")
    args = ap.parse_args()
    print("| case | search | schedule | tokens/s | bubble (closed form) | / ceiling "
          "| simulated tokens/s | simulated bubble | replay s | plan s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    out, notes = [], []
    for name, model, batch, seq in CASES:
        cluster = load_cluster(ROOT / "examples" / "clusters" / f"{name}.yaml")
        spec, job = load_model(model), TrainingJob(global_batch=batch, seq_len=seq)
        case = f"{name} / {model} / {batch} x {seq}"
        for label, kwargs in SEARCHES:
            r = run_one(cluster, spec, job, kwargs, not args.no_simulate)
            out.append({"case": case, "search": label, **r})
            print(fmt(case, label, r), flush=True)
            if label == "searched (+ zb-h1)":
                notes.append((case, r["notes"]))
    for case, lines in notes:
        print(f"\n{case}, searched (+ zb-h1):")
        for line in lines:
            print(f"- {line}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
