"""Time the timeline PNG and the Perfetto trace of the H800 + 910B plan, before and after
issue 12, in one run. "Before" loads picture.py / trace.py as they were at commit BEFORE
(git show), so both draw the same simulated step.

    PYTHONPATH=src python benchmarks/pictures.py [--skip-before] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from polychip.planner import plan_job
from polychip.simulator import picture, picture_rows, simulate, trace
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "8aed788"  # main before issue 12's pictures


def old_module(name: str, tmp: Path):
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE}:src/polychip/simulator/{name}.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    path = tmp / f"old_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"old_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed(fn, *args) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-before", action="store_true", help="skip the slow old PNG")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    cluster = load_cluster(ROOT / "examples" / "clusters" / "h800-910b.yaml")
    plan = plan_job(cluster, load_model("llama3-70b"), TrainingJob(512, 4096))
    result = simulate(plan)
    spans = sum(len(r.spans) for r in picture_rows.rows(result))
    out: dict = {"plan": "h800-910b / llama3-70b / 512 x 4096", "spans": spans,
                 "simulate_s": timed(simulate, plan)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out["trace_after"] = timed(trace.write_trace, result, tmp / "after.json")
        out["png_after"] = timed(picture.write_png, result, tmp / "after.png")
        out["note"] = picture.write_png(result, tmp / "again.png")
        if not args.skip_before:
            out["trace_before"] = timed(old_module("trace", tmp).write_trace, result,
                                        tmp / "before.json")
            out["png_before"] = timed(old_module("picture", tmp).write_png, result,
                                      tmp / "before.png")
    print(f"{out['plan']}: {spans:,} spans; simulate {out['simulate_s'][1]:.2f} CPU s")
    print("| output | before wall s | before CPU s | after wall s | after CPU s |")
    print("|---|---:|---:|---:|---:|")
    for what in ("png", "trace"):
        b = out.get(f"{what}_before", (float("nan"),) * 2)
        a = out[f"{what}_after"]
        print(f"| {what} | {b[0]:.2f} | {b[1]:.2f} | {a[0]:.2f} | {a[1]:.2f} |")
    print(f"picture: {out['note'] or 'drawn in full'}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
