"""The schedule step: the best candidates of the speed search (their shapes chosen under
1F1B) re-priced under every pipeline schedule the runtime can run, the fastest that fits.

Options (`options`): 1F1B, ZB-H1, and interleaved 1F1B with `v` chunks for every `v` from 2
that divides the model's layers -- those in `Capabilities.schedules` (`plan/capabilities.py`),
or the one schedule asked for; GPipe only when asked. A candidate under an option
(`variant`) keeps its replicas, micro-batches and placement; interleaving also needs whole
groups of S micro-batches per replica (else the option is refused for it) and a multiple of
`v` layers on every stage (each stage's count is rounded to one, the layers kept in order:
`interleave_layers`). Each variant is scored by `CostModel.evaluate` -- the schedule's own
closed form, activations in flight and gradient readiness -- and must fit memory: a stage
that no longer fits (ZB-H1 and interleaving hold more micro-batches than 1F1B) recomputes
its activations where the job allows it, as the search decides recompute. The notes say
what was chosen and why, with figures (`schedulenotes.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from polychip.costmodel import CostModel
from polychip.plan.capabilities import Capabilities
from polychip.plan.plan import Replica, Stage
from polychip.planner.assign import assign
from polychip.planner.scoring import TIE, Scored, better
from polychip.planner.shapes import ShapeBuilder
from polychip.spec.errors import InfeasibleError

SEARCHED = ("1f1b", "zb-h1", "interleaved-1f1b")  # gpipe: only when asked
MAX_VIRTUAL_STAGES = 8
GIB = 1024**3


@dataclass(frozen=True)
class Option:
    schedule: str
    virtual_stages: int = 1

    @property
    def label(self) -> str:
        v = self.virtual_stages
        return self.schedule + (f" v={v}" if v > 1 else "")


@dataclass(frozen=True)
class Verdict:
    """An option's best candidate (None: none could run it) and why it lost or failed."""

    option: Option
    best: Scored | None
    reason: str = ""


def options(requested: str, virtual_stages: int | None, caps: Capabilities,
            num_layers: int) -> tuple[list[Option], list[str]]:
    """The options to try, and a note for each schedule the runtime cannot run."""
    if requested != "auto":
        if requested == "interleaved-1f1b":
            return [Option(requested, virtual_stages or 2)], []
        return [Option(requested)], []
    out, notes = [], []
    for kind in SEARCHED:
        if kind not in caps.schedules:
            notes.append(f"{kind} not searched: polychip's runtime does not execute it "
                         "(plan/capabilities.py)")
        elif kind == "interleaved-1f1b":
            top = min(MAX_VIRTUAL_STAGES, num_layers)
            out += [Option(kind, v) for v in range(2, top + 1) if num_layers % v == 0]
        else:
            out.append(Option(kind))
    return out, notes


def interleave_layers(counts: Sequence[int], v: int) -> tuple[int, ...] | None:
    """Each stage's layer count rounded to a multiple of `v`, the total kept and no stage
    that held layers left empty (None: impossible): to the nearest multiple (at least `v`),
    then `v` added to or taken from the stages furthest from their count, earliest first."""
    total = sum(counts)
    if total % v:
        return None
    out = [max(v, v * round(n / v)) if n else 0 for n in counts]
    while sum(out) != total:
        grow = sum(out) < total
        movable = [i for i, n in enumerate(counts) if (n > 0 if grow else out[i] > v)]
        if not movable:
            return None
        i = max(movable, key=lambda j: ((counts[j] - out[j]) * (1 if grow else -1), -j))
        out[i] += v if grow else -v
    return tuple(out)


def _relayer(rep: Replica, counts: Sequence[int]) -> Replica:
    stages, start = [], 0  # (built directly: thousands of replicas per variant at scale)
    for st, n in zip(rep.stages, counts, strict=True):
        stages.append(Stage(start, start + n, st.node, st.local_devices, st.chip, st.recompute))
        start += n
    return Replica(tuple(stages), rep.batch_size, rep.micro_batch_size)


def _over_memory(cm: CostModel, scored: Scored) -> str:
    """The device furthest over its memory, in words."""
    worst = max(scored.cost.memory.items(),
                key=lambda kv: kv[1].total - _capacity(cm, scored, kv[0]))
    (ri, si), mem = worst
    chip = scored.replicas[ri].stages[si].chip
    over = (mem.total - _capacity(cm, scored, (ri, si))) / GIB
    return f"{chip} replica {ri} stage {si} over memory by {over:.1f} GiB"


def _capacity(cm: CostModel, scored: Scored, key: tuple[int, int]) -> int:
    ri, si = key
    return cm.chip(scored.replicas[ri].stages[si].chip).memory_bytes


def variant(cm: CostModel, scored: Scored, option: Option,
            builder: ShapeBuilder | None = None, beat: Scored | None = None
            ) -> tuple[Scored | None, str]:
    """`scored` re-priced under `option` (None, and why, if it cannot run it or fit): its
    replicas as they are, and with `builder` (the option's memory) each shape's layers
    split again for it; the faster. Under its own schedule as it is, `scored` is its own
    variant (`evaluate` is a function of the replicas, schedule and ZeRO-1 alone). A
    variant whose pipeline alone is slower than ``beat`` is not priced: it cannot be
    `better` than it."""
    if option == Option(scored.schedule, scored.virtual_stages):
        got, why = scored, ""
    else:
        got, why = _priced(cm, scored, scored.replicas, scored.classes, option, beat)
    # the resplit keeps every replica's micro-batches and stages: refused the same way
    if builder is not None and not _ungrouped(scored.replicas, option):
        split = _resplit(cm, scored, builder)
        if split is not None:
            again, _ = _priced(cm, scored, *split, option, better(beat, got))
            got = better(got, again)
    return got, "" if got is not None else why


def _resplit(cm: CostModel, scored: Scored, builder: ShapeBuilder
             ) -> tuple[tuple[Replica, ...], tuple] | None:
    """The candidate's shapes with their layers split for the builder's schedule (its
    activations in flight set the layer caps), placed anew; None if one cannot fit, or if
    they are the candidate's own (it came from that builder's search)."""
    shards = len(scored.replicas) if scored.zero1 else 1
    classes = []
    for shape, micro in scored.classes:
        top = max(micro)
        new = builder.build(shape.template, shape.micro_batch_size, shards, top, float(top - 1))
        if new is None:
            return None
        classes.append((new, micro))
    if all(new is shape for (new, _), (shape, _) in zip(classes, scored.classes, strict=True)):
        return None  # the builder's own shapes (a candidate of its search): nothing new
    replicas = assign(cm.cluster, classes)
    return None if replicas is None else (replicas, tuple(classes))


def _priced(cm: CostModel, scored: Scored, replicas: tuple[Replica, ...], classes: tuple,
            option: Option, beat: Scored | None = None) -> tuple[Scored | None, str]:
    v = option.virtual_stages
    if option.schedule == "interleaved-1f1b" and v > 1:
        if why := _ungrouped(replicas, option):
            return None, why
        memo: dict[tuple[int, ...], tuple[int, ...] | None] = {}
        counts = []
        for r in replicas:  # replicas of one shape share their counts
            held = tuple(st.num_layers for st in r.stages)
            counts.append(memo[held] if held in memo else
                          memo.setdefault(held, interleave_layers(held, v)))
        for rep, c in zip(replicas, counts, strict=True):
            if c is None and cm.model.num_layers % v:
                return None, f"{cm.model.num_layers} layers do not split into chunks of {v}"
            if c is None:
                return None, (f"{rep.num_stages} stages cannot each hold a multiple of {v} "
                              f"of the {cm.model.num_layers} layers")
        replicas = tuple(_relayer(r, c) for r, c in zip(replicas, counts, strict=True))
    if beat is not None and (cm.job.tokens_per_step / cm.pipeline_floor_s(
            replicas, option.schedule, v) < beat.tokens_per_s * (1 - TIE)):  # not a tie
        return None, f"slower than {beat.tokens_per_s:,.0f} tokens/s"
    cost = cm.evaluate(replicas, option.schedule, scored.zero1, v)
    if not cost.feasible and cm.job.allow_recompute:  # recompute where it does not fit
        over = {k for k, mem in cost.memory.items()
                if mem.total > cm.chip(replicas[k[0]].stages[k[1]].chip).memory_bytes}
        replicas = tuple(
            dataclasses.replace(r, stages=tuple(
                dataclasses.replace(st, recompute=True) if (ri, si) in over else st
                for si, st in enumerate(r.stages)))
            for ri, r in enumerate(replicas))
        cost = cm.evaluate(replicas, option.schedule, scored.zero1, v)
    out = dataclasses.replace(scored, classes=classes, replicas=replicas, cost=cost,
                              schedule=option.schedule, virtual_stages=v)
    if not cost.feasible:
        return None, _over_memory(cm, out) + (" even with recompute"
                                               if cm.job.allow_recompute else "")
    return out, ""


def _ungrouped(replicas: Sequence[Replica], option: Option) -> str:
    """Why interleaving cannot run these replicas ('' if it can, or `option` does not
    interleave): it needs whole groups of S micro-batches on every replica."""
    if option.schedule != "interleaved-1f1b" or option.virtual_stages < 2:
        return ""
    for ri, rep in enumerate(replicas):
        if rep.num_micro_batches % rep.num_stages:
            return (f"replica {ri} has {rep.num_micro_batches} micro-batches, not whole "
                    f"groups of its {rep.num_stages} stages")
    return ""


def builders_for(cm: CostModel, opts: Sequence[Option],
                 given: dict[Option, ShapeBuilder] | None = None
                 ) -> dict[Option, ShapeBuilder]:
    """A shape builder per option but 1F1B (the search's own), for `variant`: those
    ``given`` (a search's own, its caches warm), new ones for the rest."""
    given = given or {}
    return {o: given.get(o) or ShapeBuilder(cm, o.schedule, o.virtual_stages) for o in opts
            if o != Option("1f1b")}


def reschedule(cm: CostModel, candidates: Iterable[Scored], opts: Sequence[Option],
               builders: dict[Option, ShapeBuilder] | None = None
               ) -> tuple[Scored | None, list[Verdict]]:
    """The fastest variant of any candidate under any option that fits, and per option
    its best variant (or the reason the first candidate could not run it)."""
    pool = list(candidates)
    builders = builders_for(cm, opts) if builders is None else builders
    verdicts, best = [], None
    for option in opts:
        top, reason = None, ""
        for scored in pool:  # (a variant slower than the option's best so far is not priced)
            got, why = variant(cm, scored, option, builders.get(option), top)
            top = better(top, got)
            reason = reason or why
        verdicts.append(Verdict(option, top, "" if top is not None else reason))
        best = better(best, top)
    return best, verdicts


CANDIDATES = 8  # the speed search's best distinct candidates re-priced under every option


@dataclass(frozen=True)
class Step:
    """The schedule step's outcome: the chosen candidate, each chip type's best alone
    re-priced the same way (the baselines), and the verdict on every option."""

    best: Scored
    alone: dict[str, Scored | None]
    verdicts: tuple[Verdict, ...]


def step(cm: CostModel, scored: Iterable[Scored], best: Scored,
         alone: dict[str, Scored | None], opts: Sequence[Option],
         builders: dict[Option, ShapeBuilder] | None = None) -> Step:
    """Re-price `best` and the `CANDIDATES` best distinct candidates of each search (1F1B's,
    and ZB-H1's own when it ran) under every option (``builders``: the searches' own shape
    builders by option, reused). A forced option that no candidate can run is an
    InfeasibleError."""
    distinct: dict[tuple, Scored] = {best.replicas: best}
    kinds: dict[str, int] = {}  # the best of each search (1F1B's, ZB-H1's own)
    for s in sorted(scored, key=lambda s: -s.tokens_per_s):
        if s.replicas not in distinct and kinds.get(s.schedule, 0) < CANDIDATES:
            distinct[s.replicas] = s
            kinds[s.schedule] = kinds.get(s.schedule, 0) + 1
    builders = builders_for(cm, opts, builders)
    chosen, verdicts = reschedule(cm, distinct.values(), opts, builders)
    if chosen is None:  # under auto, 1F1B always runs
        raise InfeasibleError(f"{opts[0].label}: no candidate plan can run it ("
                              f"{verdicts[0].reason}); use --schedule auto or 1f1b")
    again = {chip: reschedule(cm, [r], opts, builders)[0] if r is not None else None
             for chip, r in alone.items()}
    chips = {st.chip for r in chosen.replicas for st in r.stages}
    if len(chips) == 1 and (chip := chips.pop()) in again:  # a type's best alone, too
        again[chip] = better(again[chip], chosen)
    return Step(chosen, again, tuple(verdicts))


def repriced(cm: CostModel, scored: Scored, opts: Sequence[Option]) -> Scored:
    """`scored` under its fastest option that fits (itself if none does)."""
    return reschedule(cm, [scored], opts)[0] or scored


def replan_schedule(schedule: str) -> str:
    """The schedule to plan again with for a plan of `schedule` whose chips or figures
    changed: 1F1B and GPipe as they were; a schedule the search chose for the old replicas'
    shapes (interleaving needs whole groups of micro-batches and chunked layers, ZB-H1 its
    memory) is searched again (`auto`)."""
    return schedule if schedule in ("1f1b", "gpipe") else "auto"
