"""Printing what a run measured (shared by `train` and `demo`); no torch here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from polychip.plan.plan import Plan
    from polychip.runtime.metrics import RunSummary


def islands_line(plan: Plan, emulate: bool) -> str:
    from polychip.runtime.topology import islands, rank_roles

    roles = rank_roles(plan, emulate=emulate)
    parts = []
    for members in islands(roles):
        first = roles[members[0]]
        via = "" if first.island.endswith("/" + first.backend) else f" via {first.backend}"
        parts.append(f"{first.island}{via}: ranks {', '.join(map(str, members))}")
    return f"{len(parts)} island(s): " + " | ".join(parts)


FAR_FROM_ESTIMATE = 1.25  # a measured step this many times off the estimate (either way)
def emulation_note(summary: RunSummary) -> str:
    """Which figures are measured and which emulated, and how far to trust the emulation."""
    if not summary.emulated:
        return ("All times are MEASURED on this machine (wall clock, no emulation); the "
                "metrics file has each rank's phases per step.")
    d = f"{summary.dilation:g}"
    raised = ""
    if summary.dilation_start is not None and summary.dilation != summary.dilation_start:
        raised = (f" The dilation was raised from {summary.dilation_start:g} during the run, "
                  f"when overruns cost the emulated chips time.")
    return (f"Chip speeds were EMULATED on this CPU: every compute phase lasted {d} x the cost "
            f"model's time for its chip, each transfer between stages arrived {d} x its "
            f"modelled time after it was sent, and each gradient all-reduce was followed by "
            f"{d} x its modelled time. Emulated chip time counts those slots and every wait "
            f"for other ranks / {d}, and this host's own work outside the slots (Python, "
            f"data, posting sends) at its real duration; 'wall' figures, and the phase fields "
            f"of the metrics file, are MEASURED on this host. Overruns: "
            f"{summary.num_overruns} of {summary.num_phases} compute phases ran past their "
            f"slot; the emulated chips lost {summary.lost_fraction:.1%} of their time to them "
            f"(a late phase is made up by the next one when it follows directly).{raised}")


def step_times(plan: Plan) -> tuple[float, float]:
    """(the plan's analytic step time, the simulator's) in chip seconds, for the plan as it
    is (the plan's own estimate if it has one)."""
    from polychip.costmodel.estimate import CostModel
    from polychip.simulator import simulate

    if plan.estimate is not None and plan.estimate.source == "analytic":
        analytic = plan.estimate.step_time_s
    else:
        cost = CostModel(plan.cluster, plan.model, plan.job)
        analytic = cost.evaluate(plan.replicas, plan.schedule, plan.zero1,
                                 plan.virtual_stages).step_time_s
    return analytic, simulate(plan).step_time_s


def analytic_gap_note(plan: Plan, measured_s: float, estimated_s: float,
                      plan_path: str = "PLAN.json", metrics_path: str | None = None
                      ) -> str | None:
    """One line when a measured step is far from an estimate whose compute figures are the
    cost model's own (not a profile's): why, and the commands that measure the chips."""
    sources = plan.estimate.sources if plan.estimate is not None else {}
    ratio = measured_s / estimated_s if estimated_s > 0 else float("inf")
    if sources.get("block", "analytic") == "measured" or (
            1 / FAR_FROM_ESTIMATE <= ratio <= FAR_FROM_ESTIMATE):
        return None
    chips = sorted({st.chip for r in plan.replicas for st in r.stages})
    mbs = ",".join(str(b) for b in sorted({r.micro_batch_size for r in plan.replicas}))
    metrics = metrics_path or "METRICS.jsonl"
    return (f"note: the measured step ({measured_s:.3g} s) is {ratio:.2g}x the estimate "
            f"({estimated_s:.3g} s), whose compute figures are analytic (the catalog's or "
            f"cluster file's figures for {', '.join(chips)}), not this machine's; measure "
            f"the chips: `polychip profile --model {plan.model.name} --chip {chips[0]} "
            f"--precision {plan.job.precision} --seq-lens {plan.job.seq_len} --micro-batches "
            f"{mbs} --out P.json` (one per chip type), then `polychip estimate {plan_path} "
            f"--profile P.json` (or `polychip plan ... --profile P.json`), and after a run "
            f"with --metrics, `polychip calibrate {metrics} {plan_path} --profile P.json`")


def print_train_summary(console: Console, plan: Plan, summary: RunSummary, *,
                        plan_path: str = "PLAN.json", metrics_path: str | None = None) -> None:
    s = summary
    basis = "emulated chip time" if s.emulated else "measured"
    console.print(f"[bold]polychip train[/bold]: {s.world_size} ranks, "
                  f"{islands_line(plan, s.emulated)}; {s.steps} steps of "
                  f"{s.tokens_per_step:,} tokens")
    console.print(f"loss {s.loss_first:.3f} -> {s.loss_last:.3f}")
    table = Table(title=f"throughput, tokens/s (run: {basis})")
    for col in ("run", "plan estimate", "run / estimate", "ideal (sum of replicas)",
                "wall on this host (measured)"):
        table.add_column(col, justify="right")
    est = s.estimate_tokens_per_s
    table.add_row(f"{s.tokens_per_s:,.0f}", "—" if est is None else f"{est:,.0f}",
                  "—" if not est else f"{s.tokens_per_s / est:.0%}",
                  f"{s.ideal_tokens_per_s:,.0f}", f"{s.wall_tokens_per_s:,.0f}")
    console.print(table)
    analytic, simulated = step_times(plan)
    steps = Table(title=f"step time, seconds (run: {basis})")
    for col in ("run", "analytic estimate", "simulated", "run / simulated"):
        steps.add_column(col, justify="right")
    steps.add_row(f"{s.step_time_s:.4g}", f"{analytic:.4g}", f"{simulated:.4g}",
                  f"{s.step_time_s / simulated:.0%}")
    console.print(steps)
    console.print(_stage_table(s, basis))
    console.print(emulation_note(s))
    gap = None if s.emulated else analytic_gap_note(plan, s.step_time_s, analytic, plan_path,
                                                     metrics_path)
    if gap:
        console.print(gap)


_MEMORY_KIND = {"cpu-tensors": "tensors counted", "device-allocator": "device allocator"}


def _stage_table(s: RunSummary, basis: str) -> Table:
    kinds = sorted({_MEMORY_KIND.get(st.memory_kind, st.memory_kind) for st in s.stages})
    per = Table(title=f"per stage (replica.stage): mean milliseconds per step ({basis}); "
                      f"peak memory ({', '.join(kinds)}) and micro-batches held, measured",
                box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for col in ("r.s", "chip", "layers", "compute", "p2p wait", "grad sync", "optim.",
                "idle", "held", "MiB"):
        per.add_column(col, justify="left" if col == "chip" else "right")
    for st in s.stages:
        t = st.timed
        layers = ", ".join(f"{a}" if b - a == 1 else f"{a}–{b - 1}" for a, b in st.layers)
        per.add_row(f"{st.replica}.{st.stage}", st.chip, layers,
                    *(f"{v * 1e3:.2f}" for v in (t.compute_s, t.pipeline_wait_s, t.grad_sync_s,
                                                 t.optimizer_s, t.idle_s)),
                    str(st.peak_activations), f"{st.peak_memory_bytes / 2**20:,.1f}")
    return per
