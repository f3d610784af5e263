"""The corrections `polychip calibrate` fits: per chip type, the ratio measured / estimated of
the phase each one multiplies (docs/cost-model.md, "Calibrate"), and the profiles that carry
them.

- `compute`: the run's compute phases on the chip's stages over the estimate's (sums over
  the stages, so the longer ones weigh more);
- `optimizer`: the same for the optimizer step;
- `p2p`: of the pipelines' waits, the part the transfers explain. With the compute
  corrected, the estimate's waits with free transfers (bubbles) are taken from the measured
  waits; what is left over the estimate's share of the transfers (its waits with the modelled
  transfers, less the bubbles) is the factor, on every chip that sends or receives;
- `grad_sync`: the measured exposed gradient sync over the estimate's. The rank that arrives
  last at the all-reduce waits least: its time (the least of the stages') is the sync's.

A new factor multiplies the one the estimate already used (a profile's corrections), so
calibrating again refines it. A phase with nothing to measure (one replica: no gradient
sync; no pipeline: no transfers) keeps its factor and says why.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from polychip import __version__
from polychip.costmodel import profiled
from polychip.costmodel.compute import StageTimes
from polychip.costmodel.pipeline import schedule_form
from polychip.plan.plan import Plan
from polychip.planner.calibrate import Comparison, StagePhases
from polychip.spec.accelerators import normalise
from polychip.spec.profile import Corrections, ModelShape, Profile, Provenance

TINY_S = 1e-9  # an estimated phase this short has nothing to correct


@dataclass(frozen=True)
class Fitted:
    corrections: dict[str, Corrections]  # chip type -> its corrections after calibration
    ratios: dict[str, dict[str, float]]  # chip type -> phase -> measured / estimated
    notes: tuple[str, ...]  # phases left as they were, and why


def _per_chip(cmp: Comparison, phase: str) -> dict[str, float]:
    measured: dict[str, float] = defaultdict(float)
    estimated: dict[str, float] = defaultdict(float)
    for m, e in zip(cmp.measured, cmp.estimated, strict=True):
        measured[m.chip] += m.phases[phase]
        estimated[m.chip] += e.phases[phase]
    return {c: measured[c] / estimated[c] for c in estimated
            if estimated[c] > TINY_S and measured[c] > 0}


def _p2p_ratio(cmp: Comparison, compute: dict[str, float], optimizer: dict[str, float]
               ) -> tuple[float | None, set[str]]:
    """(measured / estimated transfer share of the pipelines' waits, the chips that send):
    the estimate's waits are re-derived with the corrected compute and optimizer."""
    cm, plan = cmp.cost_model, cmp.plan
    est = {(e.replica, e.stage): e.phases for e in cmp.estimated}
    meas = {(m.replica, m.stage): m.phases for m in cmp.measured}
    one_replica = len(plan.replicas) == 1
    measured = estimated = 0.0
    chips: set[str] = set()
    for ri, r in enumerate(plan.replicas):
        if r.num_stages < 2:
            continue
        m, keys = r.num_micro_batches, [(ri, si) for si in range(r.num_stages)]
        host = [cm.host_times(cm.chip(st.chip), r.micro_batch_size) for st in r.stages]
        # the estimate's compute (est[k]["compute_s"] is m of these), corrected
        times = [cm.times_of(r, si, plan.schedule).scaled(compute.get(st.chip, 1.0))
                 for si, st in enumerate(r.stages)]
        rows = [StageTimes(t.fwd_s + h[0], t.bwd_s, t.wgrad_s)
                for t, h in zip(times, host, strict=True)]
        stage_s = [row.total_s for row in rows]
        opt = [est[k]["optimizer_s"] * optimizer.get(st.chip, 1.0)
               for k, st in zip(keys, r.stages, strict=True)]
        links = [cm.boundary_time_s(r, j) for j in range(r.num_stages - 1)]
        free, modelled = (
            schedule_form(plan.schedule, rows, c, cm.job.overlap_p2p, plan.virtual_stages,
                          wrap).span_s(m)
            for c, wrap in (([0.0] * len(links), 0.0), (links, cm.wrap_time_s(r))))
        for si, k in enumerate(keys):
            # one replica: a stage also waits (in the next step's pipeline) for the slowest
            # optimizer and host work of the step (calibrate.estimated_stages)
            rest = (max(opt) + max(h[1] for h in host) - opt[si] - host[si][1]
                    if one_replica else 0.0)
            measured += meas[k]["pipeline_wait_s"] - (free - m * stage_s[si]) - rest
            estimated += modelled - free
        chips.update(st.chip for st in r.stages)
    if estimated <= TINY_S:
        return None, chips
    return measured / estimated, chips


def fit_corrections(cmp: Comparison) -> Fitted:
    cm, plan = cmp.cost_model, cmp.plan
    chips = sorted({st.chip for r in plan.replicas for st in r.stages})
    old = {c: profiled.corrections(cm, c) for c in chips}
    compute, optimizer = _per_chip(cmp, "compute_s"), _per_chip(cmp, "optimizer_s")
    notes = [f"{phase} on {c}: nothing estimated or measured; left as it was"
             for phase, got in (("compute", compute), ("optimizer", optimizer))
             for c in chips if c not in got]
    p2p, senders = _p2p_ratio(cmp, compute, optimizer)
    if p2p is None:
        notes.append("p2p: no pipeline transfers in this plan; left as it was")
    elif p2p <= 0:
        notes.append(f"p2p: the measured pipeline waits are no longer than the corrected "
                     f"compute explains (transfer share x{p2p:.3g}); left as it was")
        p2p = None
    sync = None
    if len(plan.replicas) < 2 or cmp.cost.dp_sync_s <= TINY_S:
        notes.append("grad_sync: one replica, no gradient sync to measure; left as it was")
    else:
        sync = min(m.phases["grad_sync_s"] for m in cmp.measured) / cmp.cost.dp_sync_s
    sync_base = max(o.grad_sync for o in old.values())
    out, ratios = {}, {}
    for c in chips:
        mine = {"compute": compute.get(c), "optimizer": optimizer.get(c),
                "p2p": p2p if c in senders else None, "grad_sync": sync}
        ratios[c] = {k: v for k, v in mine.items() if v is not None}
        base = {"compute": old[c].compute, "optimizer": old[c].optimizer, "p2p": old[c].p2p,
                "grad_sync": sync_base if sync is not None else old[c].grad_sync}
        out[c] = Corrections(**{k: base[k] * (mine[k] or 1.0) for k in base})
    return Fitted(out, ratios, tuple(notes))


def calibrated_profiles(plan: Plan, profiles: Sequence[Profile], fitted: Fitted,
                        source: str) -> dict[str, Profile]:
    """One profile per chip type of the plan: the given one's points (if any) with the new
    corrections; else only what the format needs and the corrections. `source` says which
    run they come from."""
    given = {normalise(p.chip): p for p in profiles}
    out = {}
    for chip, corrections in fitted.corrections.items():
        base = given.get(normalise(chip)) or _corrections_only(plan, chip)
        notes = "; ".join(n for n in (base.provenance.notes, f"corrections: {source}") if n)
        out[chip] = replace(base, corrections=corrections, file=None,
                            provenance=replace(base.provenance, notes=notes))
    return out


def _corrections_only(plan: Plan, chip: str) -> Profile:
    acc = plan.chip(chip)
    return Profile(
        chip=chip, model=ModelShape.of(plan.model), precision=plan.job.precision,
        attention=plan.job.attention,
        provenance=Provenance(
            device=f"{chip} (no measured points: the cost model's figures, corrected)",
            device_type=acc.device_type, torch_version="",
            date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), host="",
            polychip_version=__version__))


def _rows(rows: Sequence[StagePhases]) -> list[dict[str, Any]]:
    return [{"replica": s.replica, "stage": s.stage, "chip": s.chip, **s.phases,
             "step_s": s.step_s, "peak_memory_bytes": s.peak_memory_bytes} for s in rows]


def comparison_dict(cmp: Comparison, after: Comparison, fitted: Fitted) -> dict[str, Any]:
    """The comparison as JSON: the step and every stage's phases, measured, estimated and
    estimated after calibration; the estimate's sources; the ratios and corrections."""
    return {
        "measured_step_s": cmp.measured_step_s, "estimated_step_s": cmp.estimated_step_s,
        "calibrated_step_s": after.estimated_step_s, "memory_kind": cmp.memory_kind,
        "labels": dict(cmp.labels),
        "stages": {"measured": _rows(cmp.measured), "estimated": _rows(cmp.estimated),
                   "calibrated": _rows(after.estimated)},
        "ratios": fitted.ratios,
        "corrections": {c: asdict(k) for c, k in fitted.corrections.items()},
        "notes": list(fitted.notes),
    }
