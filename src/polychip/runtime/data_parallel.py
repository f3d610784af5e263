"""Heterogeneous data parallelism: one flat gradient buffer, sample-weighted, one collective.

Every parameter's ``.grad`` is a view into one flat buffer (per rank), so backward passes
accumulate straight into it (gradient accumulation over micro-batches needs no copy) and the
step needs a single collective. The buffer has one extra slot for the loss, so the global loss
travels with the gradients for free.

Replica r trains on b_r of the B samples: after accumulation, its buffer holds the gradient
of its *mean* loss; :meth:`GradSync.sync` scales it by b_r / B and SUMs over the ranks
(:mod:`polychip.runtime.grads`), so every rank ends with the gradient of the mean loss over
all B samples -- exactly one large batch, however unevenly it was split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from polychip.runtime.grads import scale_for_share


class GradSync:
    """Gradient buffer and sample-weighted all-reduce for the parameters of one rank."""

    def __init__(self, params: Sequence[torch.nn.Parameter], batch_share: int,
                 global_batch: int, allreduce: Callable[[torch.Tensor], None]) -> None:
        params = [p for p in params if p.requires_grad]
        kinds = {(p.dtype, p.device) for p in params}
        assert len(kinds) == 1, f"one dtype and device for all parameters, got {kinds}"
        dtype, device = kinds.pop()
        self.scale = scale_for_share(batch_share, global_batch)
        self.allreduce = allreduce
        self.num_params = sum(p.numel() for p in params)
        self.buffer = torch.zeros(self.num_params + 1, dtype=dtype, device=device)
        offset = 0
        for p in params:
            p.grad = self.buffer[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        self.params = params
        self._loss = self.buffer[self.num_params:]

    def zero_(self) -> None:
        """Zero the gradients (and the loss slot) in place; never set them to None."""
        self.buffer.zero_()

    def add_loss_(self, loss: torch.Tensor) -> None:
        """Accumulate a (detached) part of this replica's mean loss into the loss slot."""
        self._loss.add_(loss.detach().reshape(1).to(self._loss.dtype))

    @property
    def local_loss(self) -> float:
        """This replica's accumulated loss (valid before :meth:`sync`)."""
        return float(self._loss.item())

    def sync(self) -> float:
        """Sample-weighted SUM over the ranks, in place; returns the global mean loss."""
        self.buffer.mul_(self.scale)
        self.allreduce(self.buffer)
        return float(self._loss.item())

    def check_views(self) -> None:
        """Our invariant: every ``.grad`` still lives in the buffer (an optimizer's
        ``zero_grad(set_to_none=True)`` would break it)."""
        base = self.buffer.data_ptr()
        end = base + self.buffer.numel() * self.buffer.element_size()
        for p in self.params:
            assert p.grad is not None and base <= p.grad.data_ptr() < end, "grad left buffer"
