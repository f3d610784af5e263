"""The round trip on this machine's CPU, no emulation: profile -> plan -> estimate -> train ->
calibrate. Is the profiled estimate right about a real run?

1. `polychip profile` of this CPU (`runtime.profile_run`): the `tiny` model, fp32 (what the
   runtime computes in on the CPU), TP 1, the plans' micro-batch size and sequence length,
   the collectives and point-to-point between 2 gloo processes, the runtime's host work;
2. plans on examples/clusters/this-cpu.yaml (one node of 2 CPU "chips", one core each):
   a 2-stage pipeline (2 + 2 blocks, 1F1B) and a 2-replica data-parallel plan, each also with
   full activation recompute (for memory);
3. the estimate of each plan with the profile (the cost model `polychip estimate --profile`
   uses);
4. `polychip train` of each plan, not emulated, with metrics (each rank one core, one
   thread);
5. `polychip calibrate`: the run's medians (first step left out) beside the estimate, per
   phase and stage, and the estimate after calibration.

Targets (issue 9): measured step within 10 % of the profiled estimate; predicted peak memory
within 10 % of measured (as the run counts it on the CPU: the tensors held). Timings need a
quiet machine (2 ranks on 2 cores): the load average is recorded beside every figure.

    PYTHONPATH=src python benchmarks/fidelity.py --json fidelity.json
    PYTHONPATH=src python benchmarks/fidelity.py --quick        # the mechanism, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from polychip.costmodel import ProfileSet
from polychip.plan import Plan, Replica, Stage, validate_plan
from polychip.planner.calibrate import compare, error
from polychip.planner.corrections import calibrated_profiles, comparison_dict, fit_corrections
from polychip.planner.runmetrics import check_matches_plan, load_run_metrics, steady
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model
from polychip.spec.profile import Profile
from polychip.spec.profile_file import save_profile

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "clusters" / "this-cpu.yaml"
CHIP = "this-cpu"


@dataclass(frozen=True)
class Setting:
    model: str
    seq_len: int
    global_batch: int
    micro_batch: int
    steps: int  # trained per case; the first is left out
    quick: bool


FULL = Setting("tiny", 128, 16, 4, 20, quick=False)
QUICK = Setting("tiny", 64, 8, 2, 4, quick=True)


def plans(s: Setting) -> dict[str, Plan]:
    """The cases: a 2-stage pipeline and 2 data-parallel replicas, without and with full
    activation recompute, on this machine's two CPU chips (node 0, slots 0 and 1)."""
    cluster, model = load_cluster(CLUSTER), load_model(s.model)
    job = TrainingJob(s.global_batch, s.seq_len, precision="fp32")
    half, layers = model.num_layers // 2, model.num_layers
    out = {}
    for rec in (False, True):
        tail = "-recompute" if rec else ""
        pipeline = Replica((Stage(0, half, 0, (0,), CHIP, rec), Stage(half, layers, 0, (1,), CHIP,
                                                                      rec)),
                           s.global_batch, s.micro_batch)
        replicas = tuple(Replica((Stage(0, layers, 0, (slot,), CHIP, rec),), s.global_batch // 2,
                                 s.micro_batch) for slot in (0, 1))
        out[f"pipeline-2{tail}"] = Plan(cluster, model, job, (pipeline,))
        out[f"data-parallel-2{tail}"] = Plan(cluster, model, job, replicas)
    for plan in out.values():
        validate_plan(plan)
    return out


def profile_this_cpu(s: Setting) -> Profile:
    """`polychip profile --model M --chip this-cpu --tp 1 --seq-lens S --micro-batches B
    --repeats 15`."""
    from polychip.runtime.profile_comm import DEFAULT_BACKENDS
    from polychip.runtime.profile_run import ProfileRequest, profile_chip
    from polychip.runtime.profile_timing import Timing

    sizes = (1 << 12, 1 << 18) if s.quick else (1 << 12, 1 << 16, 1 << 20, 1 << 24)
    req = ProfileRequest(
        model=load_model(s.model), device_type="cpu", chip=CHIP, precision="fp32", tps=(1,),
        micro_batches=(s.micro_batch,), seq_lens=(s.seq_len,), message_bytes=sizes,
        collective_ranks=2, backend=DEFAULT_BACKENDS["cpu"],
        timing=Timing(1, 3) if s.quick else Timing(3, 15))
    return profile_chip(req, lambda what: None)


def train(plan: Plan, steps: int, metrics: Path) -> None:
    """`polychip train PLAN --steps N --metrics M` (no emulation)."""
    from polychip.runtime.hostfit import check_host_fit
    from polychip.runtime.launch import launch_local
    from polychip.runtime.session import TrainTask
    from polychip.runtime.topology import check_devices, rank_roles
    from polychip.runtime.train import TrainConfig

    config = TrainConfig(steps=steps, metrics_path=str(metrics))
    roles = rank_roles(plan, emulate=False)
    check_devices(roles)
    check_host_fit(plan, roles, config)
    launch_local(plan, TrainTask(config))


def case(name: str, plan: Plan, profile: Profile, s: Setting, work: Path) -> dict:
    metrics = work / f"{name}.jsonl"
    load_before = os.getloadavg()[0]
    train(plan, s.steps, metrics)
    records = load_run_metrics(metrics)
    check_matches_plan(records, plan, str(metrics))
    records = steady(records, 1, str(metrics))
    pset = ProfileSet.for_job([profile], plan.cluster, plan.model, plan.job)
    cmp = compare(plan, records, pset)
    fitted = fit_corrections(cmp)
    calibrated = calibrated_profiles(plan, [profile], fitted, f"benchmarks/fidelity.py {name}")
    after = compare(plan, records, ProfileSet.for_job(list(calibrated.values()), plan.cluster,
                                                      plan.model, plan.job))
    measured_mem = max(m.peak_memory_bytes for m in cmp.measured)
    estimated_mem = max(e.peak_memory_bytes for e in cmp.estimated)
    return {
        "name": name,
        "measured_step_s": cmp.measured_step_s,
        "estimated_step_s": cmp.estimated_step_s,
        "measured_peak_memory_bytes": measured_mem,
        "estimated_peak_memory_bytes": estimated_mem,
        "step_error": error(cmp.measured_step_s, cmp.estimated_step_s),
        "memory_error": error(measured_mem, estimated_mem),
        "memory_basis": cmp.memory_kind,
        "estimated_peak_memory_total_bytes": max(m.total for m in cmp.cost.memory.values()),
        "calibrated_step_s": after.estimated_step_s,
        "phase_errors": {f"{m.replica}.{m.stage}": {p: error(m.phases[p], e.phases[p])
                                                    for p in m.phases}
                         for m, e in zip(cmp.measured, cmp.estimated, strict=True)},
        "comparison": comparison_dict(cmp, after, fitted),
        "steady_steps": len({r.step for r in records}),
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def print_table(cases: list[dict]) -> None:
    print("| case | measured step s | estimated step s | error | calibrated step s | "
          "measured peak MiB | estimated peak MiB | error | load 1 min |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in cases:
        load = "–".join(f"{x:.1f}" for x in c["load_average_1min"])
        print(f"| {c['name']} | {c['measured_step_s']:.4f} | {c['estimated_step_s']:.4f} | "
              f"{_pct(c['step_error'])} | {c['calibrated_step_s']:.4f} | "
              f"{c['measured_peak_memory_bytes'] / 2**20:.2f} | "
              f"{c['estimated_peak_memory_bytes'] / 2**20:.2f} | {_pct(c['memory_error'])} | "
              f"{load} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="a small setting (sequence 64, 4 steps): checks the mechanism")
    parser.add_argument("--keep", metavar="DIR", help="keep the profile and metrics here")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="polychip-fidelity-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        profile = profile_this_cpu(s)
        save_profile(profile, work / f"{CHIP}.json")
        cases = [case(name, plan, profile, s, work) for name, plan in plans(s).items()]
    out = {"setting": vars(s), "cpu": profile.provenance.device,
           "torch_version": profile.provenance.torch_version, "cores": os.cpu_count(),
           "load_average_1min_at_profile": load, "cases": cases}
    print(f"\nRound trip on this CPU ({out['cpu']}, {out['cores']} cores), model {s.model}, "
          f"{s.global_batch} x {s.seq_len} tokens per step in micro-batches of "
          f"{s.micro_batch}, fp32, {s.steps} steps (the first left out); not emulated: "
          f"every figure MEASURED or estimated from the profile")
    print_table(cases)
    print(f"({time.perf_counter() - begin:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
