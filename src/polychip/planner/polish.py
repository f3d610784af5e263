"""The fast planner's last step: local moves on the winner, each scored exactly."""

from __future__ import annotations

from polychip.costmodel.pipeline_zb import ZeroBubbleForm
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.shapes import Shape
from polychip.planner.space import micro_batch_sizes

ROUNDS = 4  # rounds of moves at most (each from the best of the round before)


def polish(scorer: Scorer, best: Scored | None) -> Scored | None:
    """Local moves on the winner, scored exactly: one replica more or fewer of a shape, a
    single replica of it, dropping it, another micro-batch size for it, or, where a 1F1B
    window binds, one layer moved between two neighbouring stages (what the layer split
    does not weigh: the windows of runs of stages, the optimizer step on a tie). A round's
    moves all start from its best."""
    for _ in range(ROUNDS):
        if best is None:
            return None
        start = best
        for cand in _moves(scorer, best):
            best = better(best, scorer.score(cand, against=best))
        if best is start:
            break
    return best


def _moves(scorer: Scorer, best: Scored) -> list[tuple[tuple[Shape, int], ...]]:
    builder, job = scorer.builder, scorer.job
    base = [(s, len(ms)) for s, ms in best.classes]
    most = [max(ms) for _, ms in best.classes]  # micro-batches of its busiest replica
    out = []
    for i, (shape, n) in enumerate(base):
        others = base[:i] + base[i + 1 :]
        moves: list[list[tuple[Shape, int]]] = [
            [*others, (shape, n + 1)],
            [*others, (shape, n - 1)],
            [*others, (shape, 1)],
            others,
        ]
        for mb in micro_batch_sizes(job.global_batch):
            if mb != shape.micro_batch_size:
                alt = builder.build(shape.template, mb, shape.zero_shards)
                if alt is not None:
                    moves.append([*others, (alt, n)])
        # only where a window binds (else the layer split's own beat is exact) or the
        # shape is ZB-H1's (the split weighs 1F1B's form, not its chains), and only splits
        # whose pipeline is no slower for this shape's micro-batches
        binds = (shape.form.steady_beat_s > shape.form.bottleneck_s
                 or isinstance(shape.form, ZeroBubbleForm))
        for layers in _neighbour_splits(shape.layers) if binds else []:
            alt = builder.build(shape.template, shape.micro_batch_size, shape.zero_shards,
                                layers=layers)
            if alt is not None and alt.time_s(most[i]) <= shape.time_s(most[i]):
                moves.append([*others, (alt, n)])
        out += [tuple(m) for m in moves]
    return out


def _neighbour_splits(layers: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The splits with one layer moved from a stage to a neighbouring one."""
    out = []
    for j in range(len(layers) - 1):
        for d in (-1, 1):
            moved = list(layers)
            moved[j] += d
            moved[j + 1] -= d
            if min(moved) >= 1:
                out.append(tuple(moved))
    return out
