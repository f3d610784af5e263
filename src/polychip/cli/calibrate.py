"""`polychip calibrate METRICS.jsonl PLAN.json [--profile FILE ...] [--out PROFILE.json]
[--skip N]`: hold a measured run against the estimate of the plan it ran, phase by phase and
stage by stage, and write a profile per chip type with the fitted corrections that
`--profile` accepts (docs/cost-model.md, "Calibrate")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from polychip.cli.profileopts import add_profile_option
from polychip.spec.errors import PolychipError

MIB = 1 << 20
NEGLIGIBLE = 0.01  # a phase under this fraction of the step: its relative error is noise
ROWS = (("compute_s", "compute"), ("pipeline_wait_s", "pipeline wait"),
        ("grad_sync_s", "grad sync"), ("optimizer_s", "optimizer"), ("idle_s", "host (idle)"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="compare a measured run with its plan's estimate; write corrections",
        description="Compare the phases a run measured (`polychip train --metrics`) with the "
        "estimate of the plan it ran, per stage, and write profiles with the fitted "
        "corrections (measured / estimated per phase) for `--profile`.",
    )
    p.add_argument("metrics", help="the run's metrics (`polychip train --metrics OUT.jsonl`)")
    p.add_argument("plan", help="the plan the run trained")
    add_profile_option(p)
    p.add_argument("--out", metavar="PROFILE.json",
                   help="profile to write (default calibrated-CHIP.json); with several chip "
                   "types put {chip} in the name")
    p.add_argument("--skip", type=int, default=1, metavar="N",
                   help="warm-up steps left out (default 1: the first)")
    p.add_argument("--json", metavar="OUT", help="also write the comparison as JSON")
    p.set_defaults(func=run)


def _out_paths(template: str | None, chips: list[str]) -> dict[str, str]:
    if template is None:
        return {c: f"calibrated-{c}.json" for c in chips}
    if len(chips) > 1 and "{chip}" not in template:
        raise PolychipError(f"--out {template}: the plan has {len(chips)} chip types "
                            f"({', '.join(chips)}), one profile each; put {{chip}} in the "
                            f"name, e.g. --out out/calibrated-{{chip}}.json")
    return {c: template.replace("{chip}", c) for c in chips}


def _err(measured: float, estimated: float, step_s: float | None) -> str:
    """The relative error; "—" for a phase under 1 % of the step on both sides (noise)."""
    from polychip.planner.calibrate import error

    if step_s is not None and max(measured, estimated) < NEGLIGIBLE * step_s:
        return "—"
    value = error(measured, estimated)
    return "—" if value is None else f"{value:+.1%}"


def comparison_table(cmp, after) -> Table:
    table = Table(title=f"this run (MEASURED) vs the plan's estimate: ms per step; peak "
                        f"memory in MiB as the run counts it ({cmp.memory_kind})",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("stage / phase", "measured", "estimate", "error", "from", "calibrated"):
        table.add_column(col, no_wrap=True,
                         justify="left" if col in ("stage / phase", "from") else "right")
    step = cmp.measured_step_s
    for m, e, a in zip(cmp.measured, cmp.estimated, after.estimated, strict=True):
        table.add_row(f"[bold]{m.replica}.{m.stage} {m.chip}[/bold]")
        for key, name in ROWS:
            table.add_row(f"  {name}", f"{m.phases[key] * 1e3:,.2f}",
                          f"{e.phases[key] * 1e3:,.2f}", _err(m.phases[key], e.phases[key], step),
                          cmp.labels[key], f"{a.phases[key] * 1e3:,.2f}")
        table.add_row("  peak memory", f"{m.peak_memory_bytes / MIB:,.1f}",
                      f"{e.peak_memory_bytes / MIB:,.1f}",
                      _err(m.peak_memory_bytes, e.peak_memory_bytes, None),
                      cmp.labels["peak_memory_bytes"], f"{a.peak_memory_bytes / MIB:,.1f}",
                      end_section=True)
    table.add_row("[bold]step[/bold] (slowest rank)", f"{step * 1e3:,.2f}",
                  f"{cmp.estimated_step_s * 1e3:,.2f}", _err(step, cmp.estimated_step_s, None),
                  "", f"{after.estimated_step_s * 1e3:,.2f}")
    table.caption = ("estimate from: profiled (measured points of the profiles), analytic (the "
                     "cost model's own), mixed; calibrated: the estimate with the corrections "
                     "written below")
    return table


def corrections_table(fitted, before) -> Table:
    table = Table(title="corrections: measured / estimated of the phase each multiplies",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("chip", "phase", "this run", "before", "after"):
        table.add_column(col, justify="left" if col in ("chip", "phase") else "right")
    for chip, new in fitted.corrections.items():
        for phase in ("compute", "optimizer", "p2p", "grad_sync"):
            ratio = fitted.ratios[chip].get(phase)
            table.add_row(chip, phase, "—" if ratio is None else f"{ratio:.3f}",
                          f"{getattr(before[chip], phase):.3f}", f"{getattr(new, phase):.3f}")
    return table


def run(args: argparse.Namespace) -> int:
    from polychip.costmodel import ProfileSet, profiled
    from polychip.plan import load_plan
    from polychip.planner.calibrate import compare
    from polychip.planner.corrections import (
        calibrated_profiles,
        comparison_dict,
        fit_corrections,
    )
    from polychip.planner.runmetrics import (
        check_matches_plan,
        check_measured,
        load_run_metrics,
        steady,
    )
    from polychip.spec.profile_file import load_profiles, save_profile

    plan = load_plan(args.plan)
    records = load_run_metrics(args.metrics)
    check_measured(records, args.metrics)
    check_matches_plan(records, plan, args.metrics)
    records = steady(records, args.skip, args.metrics)
    given = load_profiles(args.profile) if args.profile else ()
    pset = ProfileSet.for_job(given, plan.cluster, plan.model, plan.job) if given else None
    chips = sorted({st.chip for r in plan.replicas for st in r.stages})
    paths = _out_paths(args.out, chips)
    cmp = compare(plan, records, pset)
    fitted = fit_corrections(cmp)
    source = f"`polychip calibrate {args.metrics} {args.plan}`"
    profiles = calibrated_profiles(plan, given, fitted, source)
    after = compare(plan, records, ProfileSet.for_job(list(profiles.values()), plan.cluster,
                                                      plan.model, plan.job))
    console = Console()
    steps = len({r.step for r in records})
    console.print(f"[bold]{args.metrics}[/bold] ({steps} steady step{'s' * (steps != 1)}, "
                  f"MEASURED on its machine) against [bold]{args.plan}[/bold] "
                  f"(estimated: cost model" + (f" + {len(given)} profile(s))" if given else ")"))
    console.print(comparison_table(cmp, after))
    console.print(corrections_table(fitted, {c: profiled.corrections(cmp.cost_model, c)
                                             for c in chips}))
    for note in fitted.notes:
        console.print(f"note: {note}")
    for chip, profile in profiles.items():
        Path(paths[chip]).parent.mkdir(parents=True, exist_ok=True)
        save_profile(profile, paths[chip])
        console.print(f"wrote {paths[chip]}: use it with `polychip estimate {args.plan} "
                      f"--profile {paths[chip]}`")
    if args.json:
        Path(args.json).write_text(json.dumps(comparison_dict(cmp, after, fitted), indent=1)
                                   + "\n")
        console.print(f"wrote {args.json}")
    return 0
