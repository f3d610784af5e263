"""Uneven pipeline stages on a 2-type emulated cluster, measured beside the simulator.

One pipeline of 2 stages: stage 0 on an emulated cpu-slow chip (vendor cpu-a), stage 1 on an
emulated cpu-fast chip (vendor cpu-b, 4x the peak), the `tiny` model, 32 x 128 tokens per
step in micro-batches of 4 (1F1B). The *uneven* plan puts the layer cut where the cost model
says the step is shortest; the *even* plan splits the same layers in half. Both run side by
side in one launch (same processes, one dilation), in interleaved rounds. Reported:

- uneven / even speed-up, measured vs the simulator's prediction for the same emulated chips;
- the step time in emulated chip time (slots and waits / dilation, host work outside the
  slots at its real duration: runtime.emulate) vs the simulated step time;
- the same for a hybrid plan: that pipeline beside a one-stage replica of another layout
  (per-layer gradient all-reduces across the two islands);
- the uneven plan under 1F1B and under zero bubble (zb-h1: B and W apart) side by side in
  one launch: step time and each stage's pipeline wait (its bubble). An emulated W lasts the
  cost model's ``StageTimes.wgrad_s``; where the cost model does not price it (0), this
  benchmark gives W ``--wgrad-fraction`` of the backward, and says so.

    PYTHONPATH=src python benchmarks/runtime_pp.py --json runtime_pp.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from polychip.costmodel.estimate import CostModel
from polychip.plan import Plan, Replica, Stage, validate_plan
from polychip.runtime.compare import CompareTask, even_layer_split
from polychip.runtime.launch import launch_local
from polychip.runtime.train import TrainConfig
from polychip.simulator import simulate
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import PRESETS

TINY = PRESETS["tiny"]
SEQ_LEN, GLOBAL_BATCH, MICRO_BATCH = 128, 32, 4
CLUSTER = {"name": "slow-fast", "nodes": [
    {"chip": "cpu-slow", "count": 1, "chips_per_node": 1, "nic_gbps": 10},
    {"chip": "cpu-fast", "count": 1, "chips_per_node": 1, "nic_gbps": 10}]}


def two_stage_plan(cut: int) -> Plan:
    cluster = cluster_from_dict(CLUSTER)
    L = TINY.num_layers
    stages = (Stage(0, cut, 0, (0,), "cpu-slow"), Stage(cut, L, 1, (0,), "cpu-fast"))
    plan = Plan(cluster, TINY, TrainingJob(GLOBAL_BATCH, SEQ_LEN),
                (Replica(stages, GLOBAL_BATCH, MICRO_BATCH),))
    validate_plan(plan)
    return plan


def uneven_plan() -> Plan:
    """The cut with the shortest analytic step (what a planner would choose)."""
    def step_s(cut: int) -> float:
        plan = two_stage_plan(cut)
        return CostModel(plan.cluster, plan.model, plan.job).evaluate(plan.replicas).step_time_s
    return two_stage_plan(min(range(1, TINY.num_layers), key=step_s))


def analytic_s(plan: Plan) -> float:
    cm = CostModel(plan.cluster, plan.model, plan.job)
    return cm.evaluate(plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages).step_time_s


def measure(rounds: int, steps: int, dilation: float | None = None) -> dict:
    uneven = uneven_plan()
    even = even_layer_split(uneven)
    config = TrainConfig(steps=steps, emulate=True, dilation=dilation)
    task = CompareTask((uneven, even), (steps, max(2, steps // 2)), config, rounds=rounds)
    summaries = launch_local(uneven, task)[0]
    runs_u, runs_e = summaries[0::2], summaries[1::2]
    step_u = statistics.median(s.step_time_s for s in runs_u)
    step_e = statistics.median(s.step_time_s for s in runs_e)
    sim_u, sim_e = simulate(uneven), simulate(even)
    return {
        "layers_uneven": [[s.layer_start, s.layer_end] for s in uneven.replicas[0].stages],
        "layers_even": [[s.layer_start, s.layer_end] for s in even.replicas[0].stages],
        "chips": [s.chip for s in uneven.replicas[0].stages],
        "micro_batches": uneven.replicas[0].num_micro_batches,
        "dilation": runs_u[0].dilation,
        "rounds": rounds,
        "step_time_measured_s": step_u,
        "step_time_simulated_s": sim_u.step_time_s,
        "step_time_analytic_s": analytic_s(uneven),
        "even_step_time_measured_s": step_e,
        "even_step_time_simulated_s": sim_e.step_time_s,
        "even_step_time_analytic_s": analytic_s(even),
        "measured_over_simulated": step_u / sim_u.step_time_s,
        "even_measured_over_simulated": step_e / sim_e.step_time_s,
        "uneven_speedup_measured": step_e / step_u,
        "uneven_speedup_simulated": sim_e.step_time_s / sim_u.step_time_s,
        "uneven_speedup_analytic": analytic_s(even) / analytic_s(uneven),
        "speedup_ratio": (step_e / step_u) / (sim_e.step_time_s / sim_u.step_time_s),
        "step_time_measured_s_rounds": [s.step_time_s for s in runs_u],
        "even_step_time_measured_s_rounds": [s.step_time_s for s in runs_e],
        "stages_uneven": [_stage(st) for s in runs_u[-1:] for st in s.stages],
        "stages_even": [_stage(st) for s in runs_e[-1:] for st in s.stages],
        "losses_equal_across_splits": runs_u[0].losses[:2] == runs_e[0].losses[:2],
        "overruns": sum(s.num_overruns for s in summaries),
        "phases": sum(s.num_phases for s in summaries),
    }


def hybrid_plan() -> Plan:
    """The uneven pipeline beside a second replica of another layout: all 4 layers on one
    cpu-fast chip, a third of the batch; layer gradients are all-reduced among the stages
    holding them, across the two vendors' islands."""
    cluster = cluster_from_dict({**CLUSTER, "nodes": [*CLUSTER["nodes"], CLUSTER["nodes"][1]]})
    pipeline = uneven_plan().replicas[0]
    single = Replica((Stage(0, TINY.num_layers, 2, (0,), "cpu-fast"),), GLOBAL_BATCH // 2,
                     MICRO_BATCH)
    plan = Plan(cluster, TINY, TrainingJob(GLOBAL_BATCH * 3 // 2, SEQ_LEN), (pipeline, single))
    validate_plan(plan)
    return plan


def measure_hybrid(rounds: int, steps: int, dilation: float | None = None) -> dict:
    plan = hybrid_plan()
    config = TrainConfig(steps=steps, emulate=True, dilation=dilation)
    runs = launch_local(plan, CompareTask((plan,), (steps,), config, rounds=rounds))[0]
    step = statistics.median(s.step_time_s for s in runs)
    sim = simulate(plan).step_time_s
    return {"replicas": [[[s.chip, s.layer_start, s.layer_end] for s in r.stages]
                         for r in plan.replicas],
            "batch_shares": [r.batch_size for r in plan.replicas],
            "dilation": runs[0].dilation, "step_time_measured_s": step,
            "step_time_simulated_s": sim, "step_time_analytic_s": analytic_s(plan),
            "measured_over_simulated": step / sim,
            "overruns": sum(s.num_overruns for s in runs),
            "phases": sum(s.num_phases for s in runs)}


@contextmanager
def _wgrad_priced(plan: Plan, fraction: float):
    """Yield where W's emulated time comes from: the cost model's wgrad_s, or -- when it
    prices none -- ``fraction`` of the backward, patched into the cost model (the ranks are
    forked from this process and inherit it)."""
    cost = CostModel(plan.cluster, plan.model, plan.job)
    rep = plan.replicas[0]
    if all(cost.times_of(rep, si).wgrad_s > 0 for si in range(rep.num_stages)):
        yield "cost model"
        return
    times_of = CostModel.times_of

    def priced(self, replica, si):  # type: ignore[no-untyped-def]
        t = times_of(self, replica, si)
        return dataclasses.replace(t, wgrad_s=fraction * t.bwd_s)

    with mock.patch.object(CostModel, "times_of", priced):
        yield f"{fraction:g} x the backward (the cost model prices no wgrad_s)"


def measure_zero_bubble(rounds: int, steps: int, dilation: float | None,
                        wgrad_fraction: float) -> dict:
    """The uneven plan under 1F1B and under zb-h1, side by side in one launch."""
    one = uneven_plan()
    zb = dataclasses.replace(one, schedule="zb-h1")
    config = TrainConfig(steps=steps, emulate=True, dilation=dilation)
    with _wgrad_priced(one, wgrad_fraction) as source:
        summaries = launch_local(one, CompareTask((one, zb), (steps, steps), config,
                                                  rounds=rounds))[0]
    runs_1, runs_z = summaries[0::2], summaries[1::2]
    step_1 = statistics.median(s.step_time_s for s in runs_1)
    step_z = statistics.median(s.step_time_s for s in runs_z)
    sim_1, sim_z = simulate(one).step_time_s, simulate(zb).step_time_s
    return {"wgrad_from": source, "dilation": runs_1[0].dilation, "rounds": rounds,
            "step_time_1f1b_s": step_1, "step_time_zb_h1_s": step_z,
            "zb_h1_speedup": step_1 / step_z,
            "simulated_1f1b_s": sim_1, "simulated_zb_h1_s": sim_z,
            "analytic_1f1b_s": analytic_s(one), "analytic_zb_h1_s": analytic_s(zb),
            "step_time_1f1b_s_rounds": [s.step_time_s for s in runs_1],
            "step_time_zb_h1_s_rounds": [s.step_time_s for s in runs_z],
            "stages_1f1b": [_stage(st) for st in runs_1[-1].stages],
            "stages_zb_h1": [_stage(st) for st in runs_z[-1].stages],
            "losses_equal": runs_1[0].losses == runs_z[0].losses,
            "overruns": sum(s.num_overruns for s in summaries),
            "phases": sum(s.num_phases for s in summaries)}


def _stage(st) -> dict:
    """A stage's mean phases per step in emulated chip time (runtime.emulate)."""
    t = st.timed
    return {"stage": st.stage, "chip": st.chip, "layers": [list(c) for c in st.layers],
            "compute_s": t.compute_s, "pipeline_wait_s": t.pipeline_wait_s,
            "grad_sync_s": t.grad_sync_s, "optimizer_s": t.optimizer_s, "idle_s": t.idle_s,
            "peak_activations": st.peak_activations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=8,
                        help="uneven-plan steps per round (even split: half)")
    parser.add_argument("--dilation", type=float,
                        help="emulation dilation (default: from a timed warm-up)")
    parser.add_argument("--wgrad-fraction", type=float, default=0.5,
                        help="zb-h1's W as this fraction of the backward, where the cost "
                             "model prices no wgrad_s (default 0.5)")
    parser.add_argument("--zero-bubble-only", action="store_true",
                        help="only the 1F1B vs zb-h1 comparison, in --rounds rounds")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    if args.zero_bubble_only:
        z = measure_zero_bubble(args.rounds, args.steps, args.dilation, args.wgrad_fraction)
        _print_zero_bubble(z, begin)
        if args.json:
            Path(args.json).write_text(json.dumps({"zero_bubble": z}, indent=2))
        return 0
    f = measure(args.rounds, args.steps, args.dilation)
    h = f["hybrid"] = measure_hybrid(max(2, args.rounds - 1), args.steps, args.dilation)
    print(f"\nOne pipeline, stage 0 on {f['chips'][0]}, stage 1 on {f['chips'][1]} (emulated, "
          f"dilation {f['dilation']:g}); {f['micro_batches']} micro-batches, 1F1B; step "
          f"times in emulated chip seconds, median of {args.rounds} rounds")
    print("| layers per stage | measured step s | simulated step s | analytic step s | "
          "measured / simulated |")
    print("|---|---:|---:|---:|---:|")
    for name, key in (("uneven", ""), ("even", "even_")):
        layers = " + ".join(str(b - a) for a, b in f[f"layers_{name}"])
        print(f"| {name} ({layers}) | {f[key + 'step_time_measured_s']:.4f} | "
              f"{f[key + 'step_time_simulated_s']:.4f} | {f[key + 'step_time_analytic_s']:.4f} |"
              f" {f[key + 'step_time_measured_s'] / f[key + 'step_time_simulated_s']:.1%} |")
    print(f"\nuneven speed-up over even: measured {f['uneven_speedup_measured']:.3f}, simulated "
          f"{f['uneven_speedup_simulated']:.3f} -> {f['speedup_ratio']:.1%} of the simulator's "
          f"(target >= 90 %); measured step within {abs(f['measured_over_simulated'] - 1):.1%} "
          f"of simulated (target <= 15 %); overruns {f['overruns']} of {f['phases']} phases")
    print(f"\nHybrid: that pipeline beside a one-stage cpu-fast replica (batch {h['batch_shares']},"
          f" dilation {h['dilation']:g}): measured step {h['step_time_measured_s']:.4f} s, "
          f"simulated {h['step_time_simulated_s']:.4f} s ({h['measured_over_simulated']:.1%}), "
          f"analytic {h['step_time_analytic_s']:.4f} s; overruns {h['overruns']} of "
          f"{h['phases']} phases")
    z = f["zero_bubble"] = measure_zero_bubble(max(2, args.rounds - 1), args.steps,
                                               args.dilation, args.wgrad_fraction)
    _print_zero_bubble(z, begin)
    if args.json:
        Path(args.json).write_text(json.dumps(f, indent=2))
    return 0


def _print_zero_bubble(z: dict, begin: float) -> None:
    print(f"\n1F1B vs zb-h1 on the uneven plan (one launch, dilation {z['dilation']:g}; W = "
          f"{z['wgrad_from']}): step {z['step_time_1f1b_s']:.4f} s vs "
          f"{z['step_time_zb_h1_s']:.4f} s, zb-h1 speed-up {z['zb_h1_speedup']:.3f}; losses "
          f"equal: {z['losses_equal']}; overruns {z['overruns']} of {z['phases']} phases")
    print(f"simulated 1F1B / zb-h1: {z['simulated_1f1b_s']:.4f} / {z['simulated_zb_h1_s']:.4f} "
          f"s ({z['simulated_1f1b_s'] / z['simulated_zb_h1_s']:.3f}x); analytic "
          f"{z['analytic_1f1b_s']:.4f} / {z['analytic_zb_h1_s']:.4f} s "
          f"({z['analytic_1f1b_s'] / z['analytic_zb_h1_s']:.3f}x)")
    rounds = [f"{a:.4f}/{b:.4f}" for a, b in zip(z["step_time_1f1b_s_rounds"],
                                                  z["step_time_zb_h1_s_rounds"], strict=True)]
    print(f"rounds (1F1B/zb-h1 step s): {', '.join(rounds)}")
    print("| stage | chip | compute s, 1F1B / zb-h1 | pipeline wait s, 1F1B / zb-h1 | "
          "idle s, 1F1B / zb-h1 |")
    print("|---|---|---:|---:|---:|")
    for a, b in zip(z["stages_1f1b"], z["stages_zb_h1"], strict=True):
        print(f"| {a['stage']} | {a['chip']} | {a['compute_s']:.4f} / {b['compute_s']:.4f} | "
              f"{a['pipeline_wait_s']:.4f} / {b['pipeline_wait_s']:.4f} | "
              f"{a['idle_s']:.4f} / {b['idle_s']:.4f} |")
    print(f"({time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
