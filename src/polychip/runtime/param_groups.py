"""Which parameters AdamW decays, and the optimizer's spans cut along parameter boundaries so
that each span is of one kind (:mod:`polychip.runtime.optim`).

Weight decay, as Megatron-LM and nanoGPT apply it: every matrix (the blocks' projections, the
embedding and the output head) decays; vectors (the norms' weights, and biases were there any)
do not -- shrinking a norm's gain towards 0 is not a regulariser, it fights the normalisation.

The optimizer steps flat spans of the gradient buffer (:func:`polychip.runtime.shards.
owned_spans`), which may run across several parameters of both kinds; :func:`split_by_decay`
cuts them where the kind changes, so the two kinds go to two parameter groups. AdamW is
element-wise, so the cut changes nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from polychip.runtime.buckets import Entry
from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.grad_layout import LOSS
from polychip.runtime.shards import OwnedSpan


def decays(shape: Sequence[int]) -> bool:
    """Whether AdamW's weight decay applies to a parameter of ``shape``: matrices only."""
    return len(shape) >= 2


def entries_in(grads: StageGrads, span: OwnedSpan) -> list[tuple[Entry, int, int]]:
    """The parameters a span runs over: (entry, start, end), [start, end) relative to the
    span's start. A staged span (ZeRO-1, a piece of a bucket) lies in the piece's flat
    tensor, which holds the piece's part of each entry of the bucket, in order."""
    if span.staged is None:
        return [(e, max(e.offset, span.start) - span.start, min(e.end, span.end) - span.start)
                for e in grads.entries if e.name != LOSS
                and max(e.offset, span.start) < min(e.end, span.end)]
    bucket, index = grads.buckets[span.staged[0]], span.staged[1]
    num = next(p.piece.num for p in bucket.pieces if p.piece.index == index)
    out, at = [], 0
    for e in bucket.entries:
        n = e.part_numel(index, num)
        lo, hi = max(at, span.start), min(at + n, span.end)
        if lo < hi:
            out.append((e, lo - span.start, hi - span.start))
        at += n
    return out


def split_by_decay(grads: StageGrads, spans: Iterable[OwnedSpan]
                   ) -> list[tuple[OwnedSpan, bool]]:
    """The spans cut where the parameter kind changes: (span, decays) each."""
    out: list[tuple[OwnedSpan, bool]] = []
    for span in spans:
        pieces: list[tuple[int, int, bool]] = []
        for e, a, b in entries_in(grads, span):
            kind = decays(e.shape)
            if pieces and pieces[-1][2] == kind and pieces[-1][1] == a:
                pieces[-1] = (pieces[-1][0], b, kind)
            else:
                pieces.append((a, b, kind))
        out += [(OwnedSpan(span.start + a, span.start + b, span.staged), kind)
                for a, b, kind in pieces]
    return out


def groups_of(params: Iterable[tuple[torch.Tensor, bool]], weight_decay: float
              ) -> list[dict]:
    """Two torch parameter groups from (tensor, decays) pairs: decayed, then not (empty
    groups left out)."""
    pairs = list(params)
    groups = [{"params": [p for p, d in pairs if d], "weight_decay": weight_decay},
              {"params": [p for p, d in pairs if not d], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
