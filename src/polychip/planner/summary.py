"""A plan in words: distinct replica shapes with counts, batch shares, the estimate, memory
per chip type and the baselines with ratios. Plain data here; the CLI renders it with rich,
the golden test compares `summary_text`."""

from __future__ import annotations

from dataclasses import dataclass

from polychip.plan.plan import Plan, Replica, Stage

GIB = 1024**3


@dataclass(frozen=True)
class ReplicaRow:
    count: int
    stages: list[str]  # runs: "2x TP8 h800 layers 0-47 (24+24)" (+ " recompute")
    batch: str  # per replica: "64" or "60-68"
    micro_batch_size: int
    micro_batches: str


def _shape_key(r: Replica) -> tuple:
    return (
        tuple((s.chip, s.layer_start, s.layer_end, s.tp, s.recompute) for s in r.stages),
        r.micro_batch_size,
    )


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _layers(stages: list[Stage], first: bool) -> str:
    """"layers 0-47 (24+24)", or what a stage of no block holds (a hand-written plan)."""
    if stages[0].num_layers == 0:
        return "embedding only" if first else "head only"
    counts = "+".join(str(s.num_layers) for s in stages)
    return f"layers {stages[0].layer_start}-{stages[-1].layer_end - 1} ({counts})"


def replica_rows(plan: Plan) -> list[ReplicaRow]:
    groups: dict[tuple, list[Replica]] = {}
    for r in plan.replicas:
        groups.setdefault(_shape_key(r), []).append(r)
    rows = []
    for reps in groups.values():
        r0 = reps[0]
        runs: list[list] = []  # consecutive stages of one chip, TP and recompute choice
        for s in r0.stages:  # (a stage of no block stands alone)
            key = (s.chip, s.tp, s.recompute, s.num_layers == 0)
            if runs and runs[-1][0] == key and not key[3]:
                runs[-1][1].append(s)
            else:
                runs.append([key, [s]])
        stages = [
            f"{len(ss)}x TP{tp} {chip} {_layers(ss, ss[0] is r0.stages[0])}"
            + (" recompute" if rec else "")
            for (chip, tp, rec, _), ss in runs
        ]
        rows.append(
            ReplicaRow(
                len(reps),
                stages,
                _span([r.batch_size for r in reps]),
                r0.micro_batch_size,
                _span([r.num_micro_batches for r in reps]),
            )
        )
    return rows


def comparison(plan: Plan) -> list[tuple[str, float, float | None, str]]:
    """(name, tokens/s, plan / it, description) for the baselines, the ideal and the compute
    ceiling."""
    assert plan.estimate is not None
    out = []
    items = [*plan.baselines.values(), *(b for b in (plan.ideal, plan.limit) if b)]
    for b in items:
        ratio = plan.estimate.tokens_per_s / b.tokens_per_s if b.tokens_per_s > 0 else None
        out.append((b.name, b.tokens_per_s, ratio, b.description))
    return out


def memory_rows(plan: Plan) -> list[tuple[str, float, float]]:
    """(chip, peak GiB of its worst device, capacity GiB)."""
    assert plan.estimate is not None
    est = plan.estimate
    return [
        (chip, peak / GIB, est.memory_capacity_bytes.get(chip, 0) / GIB)
        for chip, peak in sorted(est.peak_memory_bytes.items())
    ]


def _g(x: float) -> str:
    return f"{x:.4g}"


def _unknown(x: float | None) -> str:
    return "unknown" if x is None else _g(x)


def summary_text(plan: Plan) -> str:
    """A deterministic plain-text summary (the golden-plan test compares it)."""
    est = plan.estimate
    assert est is not None
    lines = [
        f"model {plan.model.name}, cluster {plan.cluster.name} ({plan.cluster.num_devices} chips), "
        f"global batch {plan.job.global_batch} x seq {plan.job.seq_len}, schedule {plan.schedule}, "
        f"zero1 {plan.zero1}",
    ]
    for row in replica_rows(plan):
        lines.append(
            f"{row.count} x [{' | '.join(row.stages)}] batch {row.batch} = "
            f"{row.micro_batches} x {row.micro_batch_size}"
        )
    lines.append(
        f"step {_g(est.step_time_s)} s, {_g(est.tokens_per_s)} tokens/s, MFU {_g(est.mfu)}"
    )
    lines.append(f"cost {_unknown(est.cost_per_mtok)} $/Mtok, energy "
                 f"{_unknown(est.energy_kwh_per_mtok)} kWh/Mtok")
    for chip, peak, cap in memory_rows(plan):
        lines.append(f"memory {chip}: {_g(peak)} of {_g(cap)} GiB")
    for name, tokens, ratio, _ in comparison(plan):
        r = "-" if ratio is None else _g(ratio)
        lines.append(f"{name}: {_g(tokens)} tokens/s, plan/{name} {r}")
    return "\n".join(lines) + "\n"
