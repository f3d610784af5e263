"""Heterogeneous data parallelism: one flat gradient buffer per rank, reduced segment by
segment among exactly the ranks that hold each segment, sample-weighted.

Every parameter's ``.grad`` is a view into one flat buffer, so backward passes accumulate
straight into it (micro-batches need no copy). The buffer is laid out by *gradient segment*
(:func:`polychip.plan.schedule.grad_segments`: the head, layer ranges held by the same stages
in every replica, the embedding), in the schedule's all-reduce order, so consecutive
``AR[...]`` actions with the same holders are one contiguous slice and one collective. The
last stage's buffer has one more slot, right after the head, for the loss: the global loss
travels with the head's gradient for free.

Replica r trains on b_r of the B samples and scales its micro-batch losses by b_r / (B * M)
(:func:`loss_scale`), so after a SUM over the holders every gradient is that of the mean loss
over all B samples -- exactly one large batch, however unevenly the batch and the layers were
split.

Replicas of different TP degrees hold a layer in different slices: each segment is reduced in
*pieces* (:class:`polychip.runtime.topology.Piece`), the least common multiple of the holders'
degrees; a rank whose stage has the finest split reduces its slice in place, others gather
their sub-slices of each piece (and the replicated parameters, whole) into a staging buffer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from polychip.runtime.grads import scale_for_share
from polychip.runtime.groups import PieceReduce
from polychip.runtime.model import StageModule
from polychip.runtime.tensor_parallel import Split

LOSS = "<loss>"
_LAYER = re.compile(r"layers\.(\d+)\.")


def loss_scale(batch_share: int, global_batch: int, num_micro_batches: int) -> float:
    """What a micro-batch's mean loss is multiplied by before its backward pass."""
    return scale_for_share(batch_share, global_batch) / num_micro_batches


def segment_of(name: str, segments: Sequence[str]) -> str:
    """The segment (of ``segments``) a parameter belongs to, or "" (held by no other stage)."""
    if name.startswith("embed."):
        wanted = "emb"
    elif name.startswith(("head.", "final_norm.")) or name == LOSS:
        wanted = "head"
    else:
        match = _LAYER.match(name)
        assert match is not None, name
        layer = int(match.group(1))
        wanted = next((s for s in segments if ":" in s
                       and int(s.split(":")[0]) <= layer < int(s.split(":")[1])), "")
    return wanted if wanted in segments else ""


@dataclass(frozen=True)
class Entry:
    """Where one parameter's gradient (or the loss) lives in the buffer."""

    name: str
    segment: str
    offset: int
    shape: tuple[int, ...]
    split: Split | None  # how TP splits it; None: replicated on every TP rank

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


class StageGrads:
    """The gradient buffer of one rank, and the all-reduce of its segments.

    ``segments``: the segments this rank all-reduces, in its program's order; ``fused``: the
    runs of consecutive segments reduced as one collective (same holders); ``pieces``: this
    rank's pieces of each segment (from its groups); ``has_loss``: a last-stage rank.
    """

    def __init__(self, model: StageModule, segments: Sequence[str],
                 fused: Sequence[Sequence[str]], pieces: dict[str, tuple[PieceReduce, ...]],
                 *, has_loss: bool, tp_size: int) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        kinds = {(p.dtype, p.device) for _, p in named}
        assert len(kinds) == 1, f"one dtype and device for all parameters, got {kinds}"
        dtype, device = kinds.pop()
        order = [*segments, ""]
        items: list[tuple[str, nn.Parameter | None]] = list(named)
        if has_loss:
            items.append((LOSS, None))
        rank_of = {name: order.index(segment_of(name, segments)) for name, _ in items}
        items.sort(key=lambda item: rank_of[item[0]])  # stable: module order inside a segment
        self.entries: list[Entry] = []
        offset = 0
        for name, p in items:
            shape = (1,) if p is None else tuple(p.shape)
            entry = Entry(name, order[rank_of[name]], offset,
                          shape, None if p is None else model.split_of(name))
            self.entries.append(entry)
            offset += entry.numel
        self.buffer = torch.zeros(offset, dtype=dtype, device=device)
        by_name = dict(named)
        self.params = [by_name[e.name] for e in self.entries if e.name != LOSS]
        for e in self.entries:
            if e.name != LOSS:
                by_name[e.name].grad = self.view(e)
        self._loss = next((self.view(e) for e in self.entries if e.name == LOSS), None)
        self.pieces, self.tp_size = pieces, tp_size
        self._fused_at = {run[0]: tuple(run) for run in fused}

    def view(self, entry: Entry) -> torch.Tensor:
        return self.buffer[entry.offset:entry.offset + entry.numel].view(entry.shape)

    def zero_(self) -> None:
        """Zero the gradients (and the loss slot) in place; never set them to None."""
        self.buffer.zero_()

    def add_loss_(self, loss: torch.Tensor) -> None:
        assert self._loss is not None, "only a last-stage rank holds the loss"
        self._loss.add_(loss.detach().reshape(1).to(self._loss.dtype))

    @property
    def loss(self) -> float | None:
        """The (scaled) loss slot: this replica's share before the head's all-reduce, the
        whole batch's mean loss after it."""
        return None if self._loss is None else float(self._loss.item())

    def run_of(self, segment: str) -> tuple[str, ...]:
        """The fused run ``segment`` starts, or () if it is inside another run."""
        return self._fused_at.get(segment, ())

    def reduce(self, segment: str) -> bool:
        """The all-reduce of ``AR[segment]``: the whole fused run when ``segment`` starts one;
        False (nothing to do) for the other segments of a run."""
        run = self._fused_at.get(segment)
        if run is None:
            return False
        entries = [e for e in self.entries if e.segment in run]
        pieces = self.pieces[segment]
        if len(pieces) == 1:  # this rank's slice is one piece: reduce the buffer in place
            start, end = entries[0].offset, entries[-1].offset + entries[-1].numel
            pieces[0].allreduce(self.buffer[start:end])
            return True
        # A finer split elsewhere: stage every piece first (replicated gradients are read
        # before any piece writes them back), then reduce and write back in piece order.
        staged = [torch.cat([self._slice(e, p).reshape(-1) for e in entries]) for p in pieces]
        for p, flat in zip(pieces, staged, strict=True):
            p.allreduce(flat)
        for p, flat in zip(pieces, staged, strict=True):
            offset = 0
            for e in entries:
                target = self._slice(e, p)
                target.copy_(flat[offset:offset + target.numel()].view_as(target))
                offset += target.numel()
        return True

    def _slice(self, entry: Entry, piece: PieceReduce) -> torch.Tensor:
        view, split = self.view(entry), entry.split
        if split is None:
            return view
        index, num = piece.piece.index, piece.piece.num
        start, end = split.bounds(index, num)  # floor bounds nest: inside this rank's part
        held_from = split.bounds(index // (num // self.tp_size), self.tp_size)[0]
        return view.narrow(split.dim, start - held_from, end - start)

    def check_views(self) -> None:
        """Our invariant: every ``.grad`` still lives in the buffer (an optimizer's
        ``zero_grad(set_to_none=True)`` would break it)."""
        base = self.buffer.data_ptr()
        end = base + self.buffer.numel() * self.buffer.element_size()
        for p in self.params:
            assert p.grad is not None and base <= p.grad.data_ptr() < end, "grad left buffer"


def fused_runs(segments: Sequence[str], holders: dict[str, tuple[int, ...]]
               ) -> list[list[str]]:
    """This rank's segments (``segments``, in its program's order) in runs reduced as one
    collective: segments next to each other in the global all-reduce order (``holders``, the
    schedule's ``groups``) with the same holders. Every holder then sees the same runs, since
    nothing lies between two such segments."""
    order = list(holders)
    runs: list[list[str]] = []
    for seg in segments:
        last = runs[-1][-1] if runs else None
        if (last is not None and order.index(seg) == order.index(last) + 1
                and holders[last] == holders[seg]):
            runs[-1].append(seg)
        else:
            runs.append([seg])
    return runs
