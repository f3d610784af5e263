"""Heterogeneous data parallelism: one flat gradient buffer per rank, combined bucket by
bucket among exactly the ranks that hold each segment, sample-weighted.

The buffer is laid out by *gradient segment* (:func:`polychip.plan.segments.grad_segments`:
the head, layer ranges held by the same stages in every replica, the embedding), in the
schedule's all-reduce order, so consecutive ``AR[...]`` actions with the same holders are one
contiguous *run*, cut into buckets (:mod:`polychip.runtime.buckets`). The last stage's buffer
has one more slot, right after the head, for the loss: the global loss travels with the
head's gradient for free. The parameters live in a second flat buffer of the same layout
(their ``.data`` are views into it), in the compute dtype, so that ZeRO-1's all-gather and the
optimizer's master weights work on the same slices.

Gradients are accumulated over the micro-batches in the buffer, in the reduce dtype. When it
is the parameters' dtype, every ``.grad`` is a view into the buffer and backward accumulates
straight into it; otherwise (16-bit compute, fp32 reduction) a post-accumulate-grad hook adds
each micro-batch's gradient into the buffer and frees it.

Replica r trains on b_r of the B samples and scales its micro-batch losses by b_r / (B * M)
(:func:`loss_scale`), so after a SUM over the holders every gradient is that of the mean loss
over all B samples -- exactly one large batch, however unevenly the batch and the layers were
split.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import nn

from polychip.plan.collectives import Kind
from polychip.runtime.buckets import Bucket, CommThread, Entry, Readiness
from polychip.runtime.grad_layout import LOSS, layout
from polychip.runtime.grads import scale_for_share
from polychip.runtime.groups import PieceSync
from polychip.runtime.model import StageModule

DEFAULT_BUCKET_BYTES = 25 * 2**20
"""As DistributedDataParallel's default bucket_cap_mb."""


def loss_scale(batch_share: int, global_batch: int, num_micro_batches: int) -> float:
    """What a micro-batch's mean loss is multiplied by before its backward pass."""
    return scale_for_share(batch_share, global_batch) / num_micro_batches


class StageGrads:
    """The gradient and parameter buffers of one rank, and the sync of its segments.

    ``segments``: the segments this rank combines, in its program's order; ``fused``: their
    runs (same holders, next to each other); ``pieces``: this rank's pieces of each segment
    (from its groups); ``has_loss``: a last-stage rank; ``chunks``: the layers of each model
    chunk it holds; ``grad_dtype``: the buffer's (the reduce dtype; default: the parameters');
    ``param_dtype``: the weights' (the compute dtype; default: as built, and then the weights
    as built are kept in ``initial`` for the optimizer's master weights);
    ``overlap``: buckets (of ``bucket_bytes``, with overlap or not) started during the last
    backward, on a communication thread; else by the ``AR`` actions; ``zero1``:
    reduce-scatter the gradients, all-gather the parameters after the optimizer step.
    """

    def __init__(self, model: StageModule, segments: Sequence[str],
                 fused: Sequence[Sequence[str]], pieces: dict[str, tuple[PieceSync, ...]],
                 *, has_loss: bool, tp_size: int,
                 chunks: Sequence[tuple[int, int]] = ((0, 1 << 30),),
                 param_dtype: torch.dtype | None = None, grad_dtype: torch.dtype | None = None,
                 overlap: bool = False, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 zero1: bool = False) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        kinds = {(p.dtype, p.device) for _, p in named}
        assert len(kinds) == 1, f"one dtype and device for all parameters, got {kinds}"
        built_dtype, device = kinds.pop()
        param_dtype = param_dtype or built_dtype
        grad_dtype = grad_dtype or param_dtype
        self.zero1, self.overlap = zero1, overlap
        self.kind: Kind = "reduce-scatter" if zero1 else "all-reduce"
        items = [(n, tuple(p.shape)) for n, p in named] + ([(LOSS, (1,))] if has_loss else [])
        size = torch.empty((), dtype=grad_dtype).element_size()
        self.entries, self.buckets, numel = layout(
            items, fused, pieces, chunks, tp_size=tp_size, split_of=model.split_of,
            bucket_numel=max(1, bucket_bytes // size),  # overlap or not: the same calls
            kinds=("reduce-scatter", "all-gather") if zero1 else ("all-reduce",),
            loss_in_head=not zero1)
        self.buffer = torch.zeros(numel, dtype=grad_dtype, device=device)
        self.param_buffer = torch.zeros(numel, dtype=param_dtype, device=device)
        by_name = dict(named)
        self.params = [by_name[e.name] for e in self.entries if e.name != LOSS]
        # the weights as built (fp32 under mixed precision: the master weights' start)
        self.initial: torch.Tensor | None = None
        if built_dtype != param_dtype:
            self.initial = torch.zeros(numel, dtype=built_dtype, device=device)
        with torch.no_grad():
            for e, p in zip((e for e in self.entries if e.name != LOSS), self.params,
                            strict=True):
                if self.initial is not None:
                    self.initial[e.offset:e.end].copy_(p.reshape(-1))
                view = self.param_view(e)
                view.copy_(p)
                p.data = view
        self.views_mode = grad_dtype == param_dtype
        self._loss = next((self.view(e) for e in self.entries if e.name == LOSS), None)
        self.pieces = pieces
        self._fused_at = {run[0]: tuple(run) for run in fused}
        self._last_bucket = {run[0]: max(b.index for b in self.buckets if b.run == tuple(run))
                             for run in fused}
        self.comm = CommThread(device) if overlap else None
        self.readiness = Readiness(self.buckets, self._launch)
        self._events: dict[int, threading.Event] = {}
        self.tp = model.tp
        partial = {id(p) for p in model.partial_grad_params()}
        self._partial = [e for e in self.entries if e.name != LOSS
                         and id(by_name[e.name]) in partial]
        self._bucket_of = {e.name: b.index for b in self.buckets for e in b.entries}
        self._hooks(by_name)

    # ---- buffers -------------------------------------------------------------------------
    def view(self, entry: Entry) -> torch.Tensor:
        return self.buffer[entry.offset:entry.end].view(entry.shape)

    def param_view(self, entry: Entry) -> torch.Tensor:
        return self.param_buffer[entry.offset:entry.end].view(entry.shape)

    def _hooks(self, by_name: dict[str, nn.Parameter]) -> None:
        partial = {e.name for e in self._partial}
        for e in self.entries:
            if e.name == LOSS:
                continue
            p = by_name[e.name]
            if self.views_mode:
                p.grad = self.view(e)
            if self.views_mode and not self.overlap:
                continue
            # a partial gradient's bucket waits for its TP sum (finish_partial_)
            bucket = None if e.name in partial else self._bucket_of.get(e.name)
            grad, chunk = self.view(e), e.chunk

            def hook(p: nn.Parameter, grad=grad, bucket=bucket, chunk=chunk) -> None:
                if not self.views_mode:  # 16-bit gradient into the reduce-dtype buffer
                    grad.add_(p.grad)
                    p.grad = None
                if self.overlap and bucket is not None:
                    self.readiness.param_done(bucket, chunk)
            p.register_post_accumulate_grad_hook(hook)

    def zero_(self) -> None:
        """Zero the gradients (and the loss slot) in place; never set them to None."""
        self.buffer.zero_()
        self.readiness.reset()
        self._events.clear()

    def add_loss_(self, loss: torch.Tensor) -> None:
        assert self._loss is not None, "only a last-stage rank holds the loss"
        self._loss.add_(loss.detach().reshape(1).to(self._loss.dtype))

    @property
    def loss(self) -> float | None:
        """The (scaled) loss slot: this replica's share before the head's sync, the whole
        batch's mean loss after it."""
        return None if self._loss is None else float(self._loss.item())

    def finish_partial_(self) -> None:
        """After the stage's last backward of the step, before any sync across replicas: sum
        over the TP group the gradients each TP rank holds only part of (the norm weights
        under sequence parallelism: each rank normalised its own positions), in the buffer,
        then let their buckets start (overlap)."""
        if not self._partial:
            return
        views = [self.view(e) for e in self._partial]
        flat = torch.cat([v.reshape(-1) for v in views])
        self.tp.all_reduce_(flat)
        offset = 0
        for v in views:
            v.copy_(flat[offset:offset + v.numel()].view_as(v))
            offset += v.numel()
        if self.overlap:
            for e in self._partial:
                bucket = self._bucket_of.get(e.name)
                if bucket is not None:
                    self.readiness.param_done(bucket, e.chunk)

    # ---- the sync ------------------------------------------------------------------------
    def arm(self, chunk: int) -> None:
        """Chunk ``chunk``'s last backward of the step comes next: its gradients are final
        as it produces them (overlap: their buckets start as they complete)."""
        if self.overlap:
            self.readiness.arm(chunk)

    def _launch(self, bucket: Bucket) -> None:
        assert self.comm is not None
        self._events[bucket.index] = self.comm.submit(
            lambda: bucket.sync(self.buffer, self.view, self.kind))

    def run_of(self, segment: str) -> tuple[str, ...]:
        """The fused run ``segment`` starts, or () if it is inside another run."""
        return self._fused_at.get(segment, ())

    def reduce(self, segment: str) -> bool:
        """``AR[segment]``: the sync of the whole run when ``segment`` starts one (waiting for
        its buckets, started during the backward with overlap); False (nothing to do) for
        the other segments of a run."""
        run = self._fused_at.get(segment)
        if run is None:
            return False
        last = self._last_bucket[segment]
        if self.comm is not None:
            self.readiness.launch_through(last)
            self.comm.wait(self._events[last])
        else:
            for b in self.buckets:
                if b.run == run:
                    b.sync(self.buffer, self.view, self.kind)
        if self.zero1 and "head" in run and self._loss is not None:
            self._sync_loss()
        return True

    def _sync_loss(self) -> None:
        """ZeRO-1: the loss slot is summed among the head's holders on its own, in each piece
        this rank holds (every piece group holds one rank of each last stage, and a stage's
        TP ranks have the same loss)."""
        assert self._loss is not None
        total = None
        for piece in self.pieces["head"]:
            coll = piece.allreduce
            padded = self._loss.new_zeros(coll.description.granularity)
            padded[0] = self._loss[0]
            coll.run(padded)
            total = padded[:1] if total is None else total
        assert total is not None
        self._loss.copy_(total)

    def check_views(self) -> None:
        """Our invariant: every ``.grad`` still lives in the buffer (an optimizer's
        ``zero_grad(set_to_none=True)`` would break it)."""
        if not self.views_mode:
            return
        base = self.buffer.data_ptr()
        end = base + self.buffer.numel() * self.buffer.element_size()
        for p in self.params:
            assert p.grad is not None and base <= p.grad.data_ptr() < end, "grad left buffer"

    def close(self) -> None:
        if self.comm is not None:
            self.comm.close()
