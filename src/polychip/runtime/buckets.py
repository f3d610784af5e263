"""Gradient buckets: contiguous slices of the flat gradient buffer, each combined by the
collectives of its segment's pieces as soon as its gradients are final.

A bucket holds whole parameters of one *run* (consecutive segments with the same holders),
at most ``bucket_bytes`` unless one parameter is larger, padded to its collectives'
granularity. With ``overlap`` its collectives start on a communication thread as soon as the
last backward has produced every gradient in it (post-accumulate-grad hooks, armed for a
model chunk's last backward of the step), buckets strictly in buffer order -- the global
all-reduce order (head, layers from the last down, embedding) -- so every rank issues the
collectives of a group in the same order; the schedule's ``AR[...]`` waits for them. Without
overlap, ``AR[...]`` runs them itself, one bucket per run: the same calls on the same bytes, so
the same result.

A rank whose stage has the finest TP split among the holders reduces its slice of the bucket
in place; others *stage* each piece (their sub-slices of each split parameter, the whole of
each replicated one, padded) into its own tensor, run it, and write back (all-reduce) or keep
it for the optimizer (ZeRO-1's reduce-scatter: the rank's owned parts are final there).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from polychip.plan.collectives import Kind
from polychip.runtime.groups import PieceSync
from polychip.runtime.tensor_parallel import Split


@dataclass(frozen=True)
class Entry:
    """Where one parameter's gradient (or the loss) lives in the buffer."""

    name: str
    segment: str
    offset: int
    shape: tuple[int, ...]
    split: Split | None  # how TP splits it; None: replicated on every TP rank
    chunk: int  # the model chunk whose backward produces it

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def full_numel(self) -> int:
        """Elements of the whole (unsplit) parameter."""
        if self.split is None:
            return self.numel
        return self.numel // self.shape[self.split.dim] * self.split.full

    def part_numel(self, part: int, parts: int) -> int:
        """Elements of part ``part`` of ``parts`` of the whole parameter (uneven by
        vocabulary rows: floor bounds)."""
        if self.split is None:
            return self.numel
        start, end = self.split.bounds(part, parts)
        return self.numel // self.shape[self.split.dim] * (end - start)

    @property
    def end(self) -> int:
        return self.offset + self.numel


@dataclass
class Bucket:
    index: int
    run: tuple[str, ...]  # the segments of its run
    start: int  # [start, end) of the buffer, padding included
    end: int
    entries: list[Entry]
    pieces: tuple[PieceSync, ...]
    tp_size: int
    staged: dict[int, torch.Tensor] = field(default_factory=dict)  # piece index -> kept grads
    param_staged: dict[int, torch.Tensor] = field(default_factory=dict)  # ... -> parameters

    @property
    def in_place(self) -> bool:
        return len(self.pieces) == 1

    def slice_of(self, view: torch.Tensor, entry: Entry, piece: PieceSync) -> torch.Tensor:
        """This rank's sub-slice of ``view`` (entry's tensor) belonging to ``piece``: the
        piece's part of the whole tensor (floor bounds nest inside this rank's part)."""
        split = entry.split
        if split is None:
            return view
        index, num = piece.piece.index, piece.piece.num
        start, end = split.bounds(index, num)
        held_from = split.bounds(index // (num // self.tp_size), self.tp_size)[0]
        return view.narrow(split.dim, start - held_from, end - start)

    def piece_numel(self, piece: PieceSync) -> int:
        """Elements of this rank's part of the bucket in ``piece`` (before padding)."""
        return sum(e.part_numel(piece.piece.index, piece.piece.num) for e in self.entries)

    def stage(self, views: Callable[[Entry], torch.Tensor], piece: PieceSync, kind: Kind
              ) -> torch.Tensor:
        """The piece's flat tensor, padded to its collective's granularity."""
        flat = torch.cat([self.slice_of(views(e), e, piece).reshape(-1) for e in self.entries])
        grain = piece.collectives[kind].description.granularity
        pad = -flat.numel() % grain
        return torch.cat((flat, flat.new_zeros(pad))) if pad else flat

    def unstage(self, views: Callable[[Entry], torch.Tensor], piece: PieceSync,
                flat: torch.Tensor) -> None:
        offset = 0
        for e in self.entries:
            target = self.slice_of(views(e), e, piece)
            target.copy_(flat[offset:offset + target.numel()].view_as(target))
            offset += target.numel()

    def sync(self, buffer: torch.Tensor, views: Callable[[Entry], torch.Tensor],
             kind: Kind) -> None:
        """Combine the bucket's gradients: ``kind`` all-reduce, or reduce-scatter (ZeRO-1)."""
        if self.in_place:
            self.pieces[0].collectives[kind].run(buffer[self.start:self.end])
            return
        # Stage every piece first: replicated gradients are read before any piece writes.
        staged = [self.stage(views, p, kind) for p in self.pieces]
        for p, flat in zip(self.pieces, staged, strict=True):
            p.collectives[kind].run(flat)
        if kind == "all-reduce":
            for p, flat in zip(self.pieces, staged, strict=True):
                self.unstage(views, p, flat)
        else:
            self.staged = {p.piece.index: flat for p, flat in zip(self.pieces, staged,
                                                                  strict=True)}


class CommThread:
    """Runs submitted jobs one after the other on a thread of its own, in the order they
    were submitted; :meth:`wait` waits for one (and so for every earlier one) and re-raises
    a failure."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device  # a device's current index is per thread: set it on ours
        self._jobs: queue.Queue[tuple[Callable[[], None], threading.Event] | None] = (
            queue.Queue())
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="polychip-grad-sync",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self.device is not None and self.device.type != "cpu":
            getattr(torch, self.device.type).set_device(self.device)
        while (item := self._jobs.get()) is not None:
            job, done = item
            try:
                if self._error is None:
                    job()
            except BaseException as exc:  # handed to the waiting thread by wait()
                self._error = exc
            done.set()

    def submit(self, job: Callable[[], None]) -> threading.Event:
        done = threading.Event()
        self._jobs.put((job, done))
        return done

    def wait(self, done: threading.Event) -> None:
        done.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"gradient sync failed: {error}") from error

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)


class Readiness:
    """Counts, during each chunk's armed (last) backward of a step, the parameters whose
    gradient is final, and hands buckets to ``launch`` in buffer order as they complete."""

    def __init__(self, buckets: Sequence[Bucket], launch: Callable[[Bucket], None]) -> None:
        self.buckets, self.launch = buckets, launch
        self.needed = [sum(e.name != "<loss>" for e in b.entries) for b in buckets]
        self.reset()

    def reset(self) -> None:
        self.armed: set[int] = set()
        self.ready = [0] * len(self.buckets)
        self.next = 0  # the first bucket not launched yet
        self.early = 0  # launched by the backward, before any AR action waited

    def arm(self, chunk: int) -> None:
        self.armed.add(chunk)
        self._advance()

    def param_done(self, bucket: int, chunk: int) -> None:
        if chunk in self.armed:
            self.ready[bucket] += 1
            self._advance()

    def _advance(self) -> None:
        while self.next < len(self.buckets) and self.ready[self.next] >= self.needed[self.next]:
            self.launch(self.buckets[self.next])
            self.next += 1
            self.early += 1

    def launch_through(self, index: int) -> None:
        """Launch every bucket up to ``index``, ready or not (the AR action is here)."""
        while self.next <= index:
            self.launch(self.buckets[self.next])
            self.next += 1
