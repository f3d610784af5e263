"""The layout of a rank's flat gradient buffer: its entries (one per parameter, and the
loss), in segment order, cut into buckets (:mod:`polychip.runtime.data_parallel`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from polychip.plan.collectives import Kind
from polychip.runtime.buckets import Bucket, Entry
from polychip.runtime.groups import PieceSync
from polychip.runtime.tensor_parallel import Split

LOSS = "<loss>"
_LAYER = re.compile(r"layers\.(\d+)\.")


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


def chunk_of(name: str, chunks: Sequence[tuple[int, int]]) -> int:
    """The model chunk whose backward produces ``name``'s gradient last in a step."""
    if name.startswith("embed."):
        return 0
    match = _LAYER.match(name)
    if match is None:  # head, final norm, the loss
        return len(chunks) - 1
    layer = int(match.group(1))
    return next(c for c, (a, b) in enumerate(chunks) if a <= layer < b)


def fused_runs(segments: Sequence[str], holders: dict[str, tuple[int, ...]]
               ) -> list[list[str]]:
    """This rank's segments (``segments``, in its program's order) in runs combined as one:
    segments next to each other in the global all-reduce order (``holders``, the schedule's
    ``groups``) with the same holders. Every holder then sees the same runs, since nothing
    lies between two such segments."""
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


def _granularity(pieces: Sequence[PieceSync], kinds: Sequence[Kind]) -> int:
    return math.lcm(*(p.collectives[k].description.granularity for p in pieces for k in kinds))


def layout(items: Sequence[tuple[str, tuple[int, ...]]], runs: Sequence[Sequence[str]],
           pieces: dict[str, tuple[PieceSync, ...]], chunks: Sequence[tuple[int, int]], *,
           tp_size: int, split_of: Callable[[str], Split | None], bucket_numel: int | None,
           kinds: Sequence[Kind], loss_in_head: bool = True
           ) -> tuple[list[Entry], list[Bucket], int]:
    """Entries and buckets of the buffer, and its length: every run's entries in bucket
    order (each bucket padded to its collectives' granularity), then what no other stage
    holds. A bucket closes when its size *in a piece* reaches ``bucket_numel``, so every
    holder of a segment, whatever its TP degree, cuts it into the same buckets.
    ``items``: (name, shape) of every parameter (and the loss) in module order; ``split_of``:
    how TP splits a parameter (the model's `split_of`; None: replicated);
    ``loss_in_head``: the loss slot rides in the head's first bucket (else in the tail)."""
    segments = [s for run in runs for s in run]
    order = [*segments, ""]
    rank_of = {name: order.index(segment_of(name, segments)) for name, _ in items}
    if not loss_in_head and LOSS in rank_of:
        rank_of[LOSS] = len(order) - 1
    ordered = sorted(items, key=lambda item: rank_of[item[0]])  # stable: module order

    def entry(name: str, shape: tuple[int, ...], at: int) -> Entry:
        return Entry(name, order[rank_of[name]], at, shape,
                     None if name == LOSS else split_of(name), chunk_of(name, chunks))

    entries: list[Entry] = []
    buckets: list[Bucket] = []
    offset = 0
    for run in runs:
        mine = [it for it in ordered if order[rank_of[it[0]]] in run]
        held = pieces.get(run[0], ())  # none: a layout that is never combined (tests)
        grain = _granularity(held, kinds) if len(held) == 1 else 1
        num = held[0].piece.num if held else tp_size
        current: list[Entry] = []
        in_piece = 0  # the bucket's size in a piece: the same on every holder
        for i, (name, shape) in enumerate(mine):
            current.append(entry(name, shape, offset))
            offset += current[-1].numel
            last = current[-1]  # its size in a piece, from the full tensor: alike on all holders
            in_piece += last.numel if last.split is None else last.full_numel // num
            full = bucket_numel is not None and in_piece >= bucket_numel
            if full or i == len(mine) - 1:
                start = current[0].offset
                offset += -(offset - start) % grain
                buckets.append(Bucket(len(buckets), tuple(run), start, offset, current, held,
                                      tp_size))
                entries += current
                current, in_piece = [], 0
    for name, shape in ordered:
        if rank_of[name] == len(order) - 1:
            entries.append(entry(name, shape, offset))
            offset += entries[-1].numel
    return entries, buckets, offset
