"""Gradient segments: the one home of how a plan's gradient is cut for data parallelism.

Replicas may cut the model differently (uneven layer splits, interleaved model chunks, other
TP degrees), so the layers are cut at every replica's stage boundaries: each *segment* is a
layer range held by one stage in every replica, and its gradient is combined among exactly
those stages. The embedding is a segment of the first stages, the final norm and output head
one of the last stages. With tied embeddings, a last stage that is not also a first stage
holds its own copy of the embedding as the output projection (Megatron keeps the copies
equal by summing their gradients), so the head segment counts that copy.

The schedule's ``AR[...]`` actions, the cost model's gradient sync, the planner's quick
estimate and the runtime's gradient buffer all read their segments from here.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from polychip.plan.plan import Plan, Replica
from polychip.spec.errors import PolychipError
from polychip.spec.model import ModelSpec

Interval = tuple[int, int, int]  # layer_start, layer_end, holder (e.g. a stage index)


@dataclass(frozen=True)
class Segment:
    """Parameters whose gradient one collective combines: a layer range held by the same
    stages in every replica, or the embedding / the head."""

    name: str  # "a:b", "emb", "head"
    holders: tuple[tuple[int, int], ...]  # (replica, stage) holding it, in rank order
    layer_start: int = 0
    layer_end: int = 0
    tied_copy: bool = False  # head: it includes a tied embedding's copy

    def num_params(self, model: ModelSpec) -> int:
        if self.name == "emb":
            return model.embedding_params
        if self.name == "head":
            return head_params(model, self.tied_copy)
        return (self.layer_end - self.layer_start) * model.layer_params


def head_params(model: ModelSpec, tied_copy: bool) -> int:
    """The head segment's parameters: final norm and head, plus the embedding's copy when the
    model ties them and the head sits on a later stage than the embedding."""
    return model.head_params + (model.embedding_params if tied_copy else 0)


def tied_copy(model: ModelSpec, pipelined: bool) -> bool:
    """Whether the head segment carries a copy of the tied embedding."""
    return model.tie_embeddings and pipelined


def cut_layers(held: Sequence[Sequence[Interval]]) -> list[tuple[int, int, tuple[int, ...]]]:
    """``held[r]``: replica r's (layer_start, layer_end, holder) intervals, covering every
    layer. The layer ranges whose holder is the same in every replica, as (start, end, holder
    of each replica), from the last layer down (the order gradients are ready in)."""
    distinct: dict[tuple[Interval, ...], int] = {}  # replicas cut alike, looked up once
    seen: dict[int, int] = {}  # the same list object (segments_of shares them): sorted once
    which = [seen[id(rep)] if id(rep) in seen else
             seen.setdefault(id(rep), distinct.setdefault(tuple(sorted(rep)), len(distinct)))
             for rep in held]
    bounds = sorted({b for rep in distinct for s, e, _ in rep for b in (s, e)})
    starts = [[s for s, _, _ in rep] for rep in distinct]
    out = []
    for a, b in reversed(list(itertools.pairwise(bounds))):
        holder = [rep[bisect.bisect_right(st, a) - 1][2]
                  for rep, st in zip(distinct, starts, strict=True)]
        out.append((a, b, tuple(holder[i] for i in which)))
    return out


def chunk_layers(replica: Replica, virtual_stages: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """[stage][chunk] -> (layer_start, layer_end) actually held. Interleaved 1F1B (v > 1):
    stage p holds v chunks; virtual stage c * S + p runs chunk c of stage p, and virtual
    stages take consecutive layers in that order."""
    v = virtual_stages
    if v == 1:
        return tuple(((s.layer_start, s.layer_end),) for s in replica.stages)
    out: list[list[tuple[int, int]]] = [[] for _ in replica.stages]
    start = 0
    for _ in range(v):
        for si, st in enumerate(replica.stages):
            if st.num_layers % v:
                raise PolychipError(
                    f"interleaved-1f1b: stage {si} has {st.num_layers} layers, not a multiple "
                    f"of virtual_stages {v}; give every stage a multiple of {v} layers"
                )
            out[si].append((start, start + st.num_layers // v))
            start += st.num_layers // v
    return tuple(tuple(c) for c in out)


def segments_of(
    replicas: Sequence[Replica], model: ModelSpec, virtual_stages: int = 1
) -> tuple[Segment, ...]:
    """Every segment of ``replicas``, single-holder ones included, in all-reduce order
    (head, layers from the last down, embedding)."""
    layouts: dict[tuple[tuple[int, int], ...], list[Interval]] = {}  # replicas cut alike
    held = []
    for r in replicas:
        layout = tuple((st.layer_start, st.layer_end) for st in r.stages)
        rep = layouts.get(layout)
        if rep is None:
            rep = layouts[layout] = [(s, e, si) for si, st in
                                     enumerate(chunk_layers(r, virtual_stages)) for s, e in st]
        held.append(rep)
    pipelined = any(r.num_stages > 1 for r in replicas)
    last = tuple((ri, r.num_stages - 1) for ri, r in enumerate(replicas))
    segs = [Segment("head", last, tied_copy=tied_copy(model, pipelined))]
    for a, b, stages in cut_layers(held):
        segs.append(Segment(f"{a}:{b}", tuple(enumerate(stages)), a, b))
    segs.append(Segment("emb", tuple((ri, 0) for ri in range(len(replicas)))))
    return tuple(segs)


def grad_segments(plan: Plan) -> tuple[Segment, ...]:
    """Every segment held by two or more stages, in all-reduce order."""
    v = plan.virtual_stages if plan.schedule == "interleaved-1f1b" else 1
    return tuple(s for s in segments_of(plan.replicas, plan.model, v) if len(s.holders) > 1)


@dataclass(frozen=True)
class Piece:
    """Part ``index`` of ``num`` of a gradient segment: that fraction of each split (TP)
    parameter and the whole of each replicated one, combined among ``ranks``: one rank of
    every stage holding the segment (in holder order). ``num`` is the least common multiple
    of the holders' TP degrees, so a stage of degree t has num / t pieces on each of its
    ranks: the combination reshards between replicas of different TP degrees exactly."""

    segment: str
    index: int
    num: int
    ranks: tuple[int, ...]


def pieces_of(seg: Segment, stage_ranks: dict[tuple[int, int], tuple[int, ...]]
              ) -> tuple[Piece, ...]:
    groups = [stage_ranks[holder] for holder in seg.holders]
    num = math.lcm(*(len(g) for g in groups))
    return tuple(Piece(seg.name, k, num, tuple(g[k * len(g) // num] for g in groups))
                 for k in range(num))


def segment_pieces(plan: Plan) -> dict[str, tuple[Piece, ...]]:
    """Every gradient segment of the plan -> its pieces, in all-reduce order."""
    stage_ranks = plan.stage_rank_map()
    return {seg.name: pieces_of(seg, stage_ranks) for seg in grad_segments(plan)}
