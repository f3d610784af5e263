"""Re-calibration from a run's own metrics, then a plan made with it: what the elastic
supervisor does when a chip is persistently slower than planned (:mod:`.slowdown`).

The same steps as ``polychip calibrate`` (:mod:`polychip.cli.calibrate`): the run's steady
records held against its plan's estimate (:func:`polychip.planner.calibrate.compare`),
corrections fitted per chip type (:func:`polychip.planner.corrections.fit_corrections`),
profiles that carry them (:func:`~polychip.planner.corrections.calibrated_profiles`) -- then
the planner again, on the same cluster, model and job, with those profiles.

Two differences from ``polychip calibrate``:

- Emulated runs are accepted: their phases are taken in emulated chip time (the step
  record's ``emulated_time``), which is the cost model's own figure except for what the
  emulation did not plan (an injected slow chip). Only the compute correction is kept for
  them: their other phases are the cost model's by construction plus the host's own
  artefacts (its gloo time in the links and collectives, optimizer steps whose real work
  overran the slot), which no chip would see.
- Only the records of the plan being re-calibrated (steps from ``since_step`` on) are used:
  the metrics file of an elastic run also holds the steps earlier plans computed.

Corrections are per chip *type* (the planner treats chips of a type as interchangeable). With
one chip of the slow one's type the correction is exact; with several it is their
stage-weighted mean, so one slow instance among healthy ones makes the planner slow all of
them down a little, and the slow one stays somewhat slower than the new plan expects.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from polychip.costmodel import ProfileSet
from polychip.plan.plan import Plan
from polychip.planner.api import plan_job
from polychip.planner.calibrate import compare
from polychip.planner.corrections import Fitted, calibrated_profiles, fit_corrections
from polychip.planner.runmetrics import (
    PHASES,
    RunRecord,
    check_matches_plan,
    load_run_metrics,
    steady,
)
from polychip.planner.schedules import replan_schedule
from polychip.spec.errors import SpecError
from polychip.spec.profile import Corrections, Profile

EMULATED_KEPT = ("compute",)  # the correction an emulated run can say anything about


def timed_records(path: str | Path, since_step: int = 0) -> tuple[RunRecord, ...]:
    """The metrics file's records of steps ``since_step`` and on, validated; an emulated
    record's phases and seconds in emulated chip time."""
    records = load_run_metrics(path)
    lines = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()
             if x.strip()]
    out = []
    for rec, raw in zip(records, lines, strict=True):
        if rec.step < since_step:
            continue
        timed = raw.get("emulated_time")
        if timed is not None:
            rec = dataclasses.replace(rec, seconds=float(timed["seconds"]),
                                      phases={p: float(timed[p]) for p in PHASES})
        out.append(rec)
    if not out:
        raise SpecError(f"no records of step {since_step} or later: the plan to re-calibrate "
                        f"ran no step yet", file=str(path))
    return tuple(out)


def profile_set(plan: Plan, profiles: Sequence[Profile]) -> ProfileSet | None:
    return ProfileSet.for_job(profiles, plan.cluster, plan.model, plan.job) if profiles else None


def recalibrate(plan: Plan, metrics_path: str | Path, *, profiles: Sequence[Profile] = (),
                since_step: int = 0, skip: int = 1) -> tuple[tuple[Profile, ...], Fitted]:
    """Profiles (one per chip type of ``plan``) with the corrections the run's records of
    ``plan`` fit, on top of ``profiles`` (those the plan was made with)."""
    file = str(metrics_path)
    records = timed_records(metrics_path, since_step)
    check_matches_plan(records, plan, file)
    records = steady(records, skip, file)
    fitted = fit_corrections(compare(plan, records, profile_set(plan, profiles)))
    if records[0].emulated:
        fitted = _compute_only(fitted, plan, profiles)
    source = f"elastic re-calibration from {file} (steps {since_step} and on)"
    made = calibrated_profiles(plan, profiles, fitted, source)
    return tuple(made.values()), fitted


def _compute_only(fitted: Fitted, plan: Plan, profiles: Sequence[Profile]) -> Fitted:
    """Emulated: every correction but compute's stays as it was."""
    pset = profile_set(plan, profiles)
    out = {}
    for chip, new in fitted.corrections.items():
        old = pset.corrections(chip) if pset is not None else Corrections()
        out[chip] = dataclasses.replace(new, p2p=old.p2p, grad_sync=old.grad_sync,
                                        optimizer=old.optimizer)
    ratios = {c: {k: v for k, v in r.items() if k in EMULATED_KEPT}
              for c, r in fitted.ratios.items()}
    notes = (*fitted.notes, "emulated run: only compute re-fitted")
    return Fitted(out, ratios, notes)


def recalibrated_plan(plan: Plan, metrics_path: str | Path, *,
                      profiles: Sequence[Profile] = (), since_step: int = 0, skip: int = 1
                      ) -> tuple[Plan, ProfileSet]:
    """A new plan for ``plan``'s cluster, model and job, made with the corrections its run
    (``metrics_path``, steps ``since_step`` on) fits; and the profiles it was made with
    (pass ``list(pset.profiles.values())`` as ``profiles`` to re-calibrate it in turn)."""
    made, _ = recalibrate(plan, metrics_path, profiles=profiles, since_step=since_step,
                          skip=skip)
    pset = profile_set(plan, made)
    assert pset is not None  # one profile per chip type of the plan
    new = plan_job(plan.cluster, plan.model, plan.job, schedule=replan_schedule(plan.schedule),
                   profile=pset)
    return new, pset
