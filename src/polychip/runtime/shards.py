"""What a rank's optimizer steps -- every parameter it holds, or under ZeRO-1 only the parts
of each bucket its reduce-scatter leaves it owning -- and ZeRO-1's all-gather of the updated
parameters (:mod:`polychip.runtime.optim`).

An owned part lies in the flat buffers (`StageGrads.buffer` / `param_buffer`, same layout), or
for a bucket this rank combines in several TP pieces (holders of other TP degrees), in the
piece's staged tensor: its gradient is the reduce-scatter's result kept there, its parameters
a staging of the current ones, all-gathered and written back after the step. Padding and the
loss slot are nobody's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from polychip.runtime.buckets import Bucket, Entry
from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.grad_layout import LOSS

Which = Literal["grad", "param", "initial"]


@dataclass(frozen=True)
class OwnedSpan:
    """[start, end) of the flat buffers, or of a staged piece (``staged``: (bucket index,
    piece index))."""

    start: int
    end: int
    staged: tuple[int, int] | None = None

    @property
    def numel(self) -> int:
        return self.end - self.start


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _clip(a: int, b: int, real: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(max(a, s), min(b, e)) for s, e in real if max(a, s) < min(b, e)]


def owned_spans(grads: StageGrads) -> list[OwnedSpan]:
    """The parts of the buffers whose optimizer step this rank takes."""
    real = _merge((e.offset, e.end) for e in grads.entries if e.name != LOSS)
    if not grads.zero1:
        return [OwnedSpan(a, b) for a, b in real]
    out: list[OwnedSpan] = []
    for b in grads.buckets:
        if b.in_place:
            coll = b.pieces[0].collectives["reduce-scatter"]
            for x, y in coll.owned_spans(b.end - b.start):
                out += [OwnedSpan(s, e) for s, e in _clip(b.start + x, b.start + y, real)]
            continue
        for p in b.pieces:
            n = b.piece_numel(p)
            coll = p.collectives["reduce-scatter"]
            for x, y in coll.owned_spans(n + -n % coll.description.granularity):
                if x < min(y, n):
                    out.append(OwnedSpan(x, min(y, n), (b.index, p.piece.index)))
    held = {e.name for b in grads.buckets for e in b.entries}
    tail = [(e.offset, e.end) for e in grads.entries if e.name != LOSS and e.name not in held]
    return out + [OwnedSpan(a, b) for a, b in _merge(tail)]


def span_tensor(grads: StageGrads, span: OwnedSpan, which: Which) -> torch.Tensor:
    """The span's gradient, parameters (`stage_params` first for staged spans) or initial
    weights (as built)."""
    if span.staged is None:
        flat = {"grad": grads.buffer, "param": grads.param_buffer, "initial": grads.initial}
        tensor = flat[which]
        assert tensor is not None
        return tensor[span.start:span.end]
    b, pi = grads.buckets[span.staged[0]], span.staged[1]
    if which == "grad":
        return b.staged[pi][span.start:span.end]
    if which == "param":
        return b.param_staged[pi][span.start:span.end]
    assert grads.initial is not None
    return span_of(grads, span, grads.initial)


def span_of(grads: StageGrads, span: OwnedSpan, flat: torch.Tensor) -> torch.Tensor:
    """The span's part of ``flat``, any tensor laid out like the buffers (the weights as
    built, an optimizer state gathered by :func:`gather_flat`)."""
    if span.staged is None:
        return flat[span.start:span.end]
    b, pi = grads.buckets[span.staged[0]], span.staged[1]

    def view(e: Entry) -> torch.Tensor:
        return flat[e.offset:e.end].view(e.shape)
    piece = next(p for p in b.pieces if p.piece.index == pi)
    return b.stage(view, piece, "all-gather")[span.start:span.end]


def gather_flat(grads: StageGrads, spans: Sequence[OwnedSpan], parts: Sequence[torch.Tensor],
                dtype: torch.dtype) -> torch.Tensor:
    """Collective under ZeRO-1: a tensor laid out like the buffers holding, on every holder,
    what each rank has for its owned spans (``parts``, one per span of ``spans``, which cover
    :func:`owned_spans`; e.g. an optimizer state), gathered as the parameters are after a
    step."""
    flat = torch.zeros_like(grads.param_buffer, dtype=dtype)

    def view(e: Entry) -> torch.Tensor:
        return flat[e.offset:e.end].view(e.shape)
    staged = {(b.index, p.piece.index): b.stage(view, p, "all-gather")
              for b in (_staged(grads) if grads.zero1 else []) for p in b.pieces}
    for span, part in zip(spans, parts, strict=True):
        target = flat if span.staged is None else staged[span.staged]
        target[span.start:span.end].copy_(part)
    if grads.zero1:
        _all_gather(grads, flat, staged)
    return flat


def _staged(grads: StageGrads) -> list[Bucket]:
    return [b for b in grads.buckets if not b.in_place]


def stage_params(grads: StageGrads) -> None:
    """ZeRO-1: the current parameters of every staged piece, for the step to update."""
    for b in _staged(grads):
        b.param_staged = {p.piece.index: b.stage(grads.param_view, p, "all-gather")
                          for p in b.pieces}


def gather_params(grads: StageGrads) -> None:
    """ZeRO-1: every rank's updated parts to every holder, bucket by bucket."""
    staged = {(b.index, i): t for b in _staged(grads) for i, t in b.param_staged.items()}
    _all_gather(grads, grads.param_buffer, staged)
    for b in grads.buckets:
        b.staged, b.param_staged = {}, {}


def _all_gather(grads: StageGrads, flat: torch.Tensor,
                staged: dict[tuple[int, int], torch.Tensor]) -> None:
    """Every bucket of ``flat`` (laid out like the buffers) all-gathered among its holders;
    a bucket combined in TP pieces through its staged tensors (``staged``: (bucket, piece)
    -> the piece's flat tensor), written back after."""

    def view(e: Entry) -> torch.Tensor:
        return flat[e.offset:e.end].view(e.shape)
    for b in grads.buckets:
        if b.in_place:
            b.pieces[0].collectives["all-gather"].run(flat[b.start:b.end])
            continue
        for p in b.pieces:
            piece_flat = staged[(b.index, p.piece.index)]
            p.collectives["all-gather"].run(piece_flat)
            b.unstage(view, p, piece_flat)
