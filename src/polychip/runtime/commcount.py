"""Count the bytes the runtime's gradient collectives move, per rank and kind of link.

:func:`count_calls` wraps the calls a description's steps make (`grads.CALLS`) in this
process and records each: the operation, the group's ranks, the bytes of the buffer part.
:func:`sent_bytes` turns the records into what this rank sends over island links and over the
bridge, by the ring algorithm every backend's bandwidth figures assume -- the same convention
the description's `Collective.sent_bytes` states -- so a test or a benchmark can hold the
calls the runtime really made against the description and the cost model (a leader-only
bridge would show the whole buffer on one rank).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from polychip.plan.collectives import BRIDGE, ISLAND, Link
from polychip.runtime import grads


@dataclass(frozen=True)
class CallRecord:
    op: str  # all_reduce, reduce_scatter, all_gather
    ranks: tuple[int, ...]  # the group's global ranks
    n_bytes: int  # the buffer part: the input of a reduction, the output of a gather


@contextmanager
def count_calls() -> Iterator[list[CallRecord]]:
    """Within the block, every gradient collective call of this process is recorded (from
    any thread) in the list it yields."""
    records: list[CallRecord] = []
    lock = threading.Lock()
    saved = dict(grads.CALLS)

    def wrap(op: str, call: Callable[..., dist.Work | None]) -> Callable[..., dist.Work | None]:
        def counted(first: torch.Tensor, *args, group=None, **kwargs):
            part = args[0] if op == "reduce_scatter" else first  # input / output
            ranks = tuple(dist.get_process_group_ranks(group))
            with lock:
                records.append(CallRecord(op, ranks, part.numel() * part.element_size()))
            return call(first, *args, group=group, **kwargs)
        return counted

    grads.CALLS.update({op: wrap(op, call) for op, call in saved.items()})
    try:
        yield records
    finally:
        grads.CALLS.update(saved)


def sent_bytes(records: list[CallRecord], island_of: Callable[[int], str]
               ) -> dict[Link, float]:
    """Bytes this rank sends per kind of link: a group of ranks of one island is an island
    link, a group spanning islands the bridge; a ring of p ranks on n bytes sends
    (p - 1)/p x n per rank for a reduce-scatter or an all-gather, twice that for an
    all-reduce."""
    out: dict[Link, float] = {}
    for r in records:
        p = len(r.ranks)
        link = ISLAND if len({island_of(x) for x in r.ranks}) == 1 else BRIDGE
        factor = 2 if r.op == "all_reduce" else 1
        out[link] = out.get(link, 0.0) + factor * (p - 1) / p * r.n_bytes
    return out
