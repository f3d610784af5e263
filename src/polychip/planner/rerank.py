"""Re-rank the planner's best candidates by a simulated step (`polychip plan --simulate`).

The analytic cost model scores thousands of candidates; it gives every stage-to-stage
transfer a whole NIC and treats the pipeline as a closed form. The discrete-event simulator
replays a step with NIC sharing, host-staged bridges and the real schedule, in 0.03-0.5 s
per plan on the examples -- affordable for the few best. The candidates are the best
distinct plans the search scored exactly (by analytic tokens/s) plus each chip type's best
plan alone; the winner is the one with the most *simulated* tokens/s (ties: the better
analytic rank).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from polychip.costmodel import CostModel
from polychip.plan.plan import Plan
from polychip.planner.baselines import describe_replicas
from polychip.planner.scoring import Scored
from polychip.simulator import SimResult, simulate


@dataclass(frozen=True)
class Candidate:
    """One re-ranked candidate: its plan (analytic estimate) and its simulated step."""

    plan: Plan
    scored: Scored
    analytic_rank: int  # 1: the cost model's favourite
    sim: SimResult

    @property
    def label(self) -> str:
        return describe_replicas(self.plan.replicas)

    @property
    def analytic_tokens_per_s(self) -> float:
        return self.scored.tokens_per_s

    @property
    def simulated_tokens_per_s(self) -> float:
        return self.sim.tokens_per_s


def shortlist(scored: Iterable[Scored], top: int, always: Iterable[Scored] = ()) -> list[Scored]:
    """The `top` distinct candidates by analytic tokens/s, plus every one of `always` (each
    chip type's best alone: structurally different plans), best analytic first."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    distinct: dict[tuple, Scored] = {}
    for s in sorted(scored, key=lambda s: (-s.tokens_per_s, s.num_replicas)):
        distinct.setdefault(s.replicas, s)
    chosen = {s.replicas: s for s in list(distinct.values())[:top]}
    for s in always:
        chosen.setdefault(s.replicas, s)
    return sorted(chosen.values(), key=lambda s: (-s.tokens_per_s, s.num_replicas))


def rerank(
    candidates: list[Scored],
    to_plan: Callable[[Scored], Plan],
    cm: CostModel,
    progress: Callable[[int, int], None] | None = None,
) -> list[Candidate]:
    """Simulate each candidate; return them best *simulated* first."""
    out = []
    for i, scored in enumerate(candidates):
        if progress is not None:
            progress(i, len(candidates))
        plan = to_plan(scored)
        out.append(Candidate(plan, scored, i + 1, simulate(plan, cost_model=cm)))
    return sorted(out, key=lambda c: (-c.simulated_tokens_per_s, c.analytic_rank))


def rerank_note(ranking: list[Candidate]) -> str:
    """Why this plan: its simulated figure beside the analytic favourite's."""
    chosen, first = ranking[0], min(ranking, key=lambda c: c.analytic_rank)
    head = (
        f"chosen by simulated step among {len(ranking)} candidates (the best by the analytic "
        f"cost model and each chip type alone): simulated {chosen.simulated_tokens_per_s:,.0f} "
        f"tokens/s, analytic {chosen.analytic_tokens_per_s:,.0f}"
    )
    if chosen is first:
        return head + "; the analytic favourite also simulates fastest"
    return head + (
        f"; the analytic favourite (analytic {first.analytic_tokens_per_s:,.0f}) simulates to "
        f"{first.simulated_tokens_per_s:,.0f} tokens/s -- the cost model's figures, baselines "
        "included, stay analytic"
    )


def runs(values: list) -> str:
    """`5/5/5/6` -> `5×3/6`: repeated neighbours as value × count."""
    out: list[list] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return "/".join(f"{v}×{n}" if n > 1 else str(v) for v, n in out)


def _features(plan: Plan) -> dict[str, str]:
    """What tells one candidate from another, each as short text (chips and TP per stage
    are in the row's replica label already)."""
    reps = plan.replicas
    one = list({r.shape_key(): r for r in reversed(reps)}.values())[::-1]

    def each(fn) -> str:
        return " | ".join(fn(r) for r in one)

    def recompute(r) -> str:
        on = [str(i) for i, st in enumerate(r.stages) if st.recompute]
        return ",".join(on) or "none"

    v = plan.virtual_stages
    return {
        "replicas": str(len(reps)),
        "layers": each(lambda r: runs([st.num_layers for st in r.stages])),
        "micro-batches": each(lambda r: f"{r.num_micro_batches}x{r.micro_batch_size}"),
        "batch": each(lambda r: str(r.batch_size)),
        "recompute stages": each(recompute),
        "schedule": plan.schedule + ("" if v <= 1 else f" v{v}"),
        "ZeRO-1": "yes" if plan.zero1 else "no",
    }


def differences(ranking: list[Candidate]) -> list[str]:
    """Per candidate, the features whose values differ among the candidates (`layers
    2/4/5×6 | 40; micro-batches 512x1`, one part per distinct pipeline shape), so no two
    rows of different plans read alike."""
    feats = [_features(c.plan) for c in ranking]
    keys = [k for k in feats[0] if len({f[k] for f in feats}) > 1] if feats else []
    return ["; ".join(f"{k} {f[k]}" for k in keys) for f in feats]
