"""Memory caps: the most layers a stage holds within its chip's memory.

A stage's cap depends on its node group, TP degree, micro-batch size, whether it is the
first or last stage, recompute, the micro-batches it holds in flight and the replicas its
optimizer state is sharded over (ZeRO-1). It is the largest n whose cost-model stage memory
(`CostModel.stage_memory`, the one memory formula) fits the chip. Memory never shrinks with
more layers, so checking that n fits and n + 1 does not proves it.

The stage memory is a straight line in the layers (from one on), the micro-batches in
flight and 1 / shards, each term truncated to whole bytes (`memory.stage_memory`): the line
through three stage memories per context (`_line`) is off by at most a few bytes per layer
and micro-batch in flight (`line_error`). Where the line puts n and n + 1 each farther than
that from the chip's capacity, it alone decides the cap; else the guess is walked to the cap
with memory checks (tests/planner/test_scale.py holds both to a plain search).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from polychip.costmodel import CostModel
from polychip.costmodel.memory import MemoryBreakdown

Context = tuple[int, int, int, bool, bool, bool]  # group, tp, micro-batch, first, last, rec


def line_error(layers: int, in_flight: int, capacity: int) -> float:
    """Bytes the line (`LayerCaps._line`) may be off the stage memory at up to `layers`
    layers: each of the three memories it is drawn through truncates five terms (< 1 byte
    each), so each slope is off by < 2 bytes, the activations' per layer and per
    micro-batch in flight; a generous 16 bytes per (layer + 2) x (in flight + 1), and
    float round-off far below 1e-9 of the capacity."""
    return 16.0 * (layers + 2) * (in_flight + 1) + 1e-9 * capacity


class LayerCaps:
    def __init__(self, cm: CostModel):
        self.cm, self.num_layers = cm, cm.model.num_layers
        self._caps: dict[tuple, int] = {}
        self._lines: dict[Context, tuple[float, ...]] = {}
        self._memory: dict[Context, Callable[[int, int, int], MemoryBreakdown]] = {}

    def cap(self, group: int, tp: int, mb: int, first: bool, last: bool, rec: bool,
            in_flight: int, shards: int) -> int:
        """Most layers such a stage holds within its chip's memory (0: not even one)."""
        key = (group, tp, mb, first, last, rec, in_flight, shards)
        hit = self._caps.get(key)
        if hit is not None:
            return hit
        ctx = key[:6]
        capacity = self.cm.cluster.groups[group].chip.memory_bytes
        fixed, per_layer = self._line_at(ctx, in_flight, shards)
        n = self._guess(fixed, per_layer, capacity)
        err = line_error(n + 1, in_flight, capacity)
        if ((n == 0 or fixed + n * per_layer <= capacity - err)
                and (n == self.num_layers or fixed + (n + 1) * per_layer > capacity + err)):
            self._caps[key] = n  # the line is clear of the capacity at n and n + 1
            return n
        memory = self._memory_of(ctx)

        def fits(n: int) -> bool:
            return memory(n, in_flight, shards).total <= capacity

        if n >= 1 and not fits(n):
            n -= 1
            while n >= 1 and not fits(n):
                n -= 1
        else:
            while n < self.num_layers and fits(n + 1):
                n += 1
        self._caps[key] = n
        return n

    def _line_at(self, ctx: Context, in_flight: int, shards: int) -> tuple[float, float]:
        """The context's stage memory as `fixed + n * per_layer` bytes (n >= 1 layers)."""
        line = self._lines.get(ctx)
        if line is None:
            line = self._lines[ctx] = self._line(ctx)
        wg, d_wg, opt, d_opt, block, ends, rest = line
        fixed = rest + wg - d_wg + (opt - d_opt) / shards + in_flight * ends
        return fixed, d_wg + d_opt / shards + in_flight * block

    def _guess(self, fixed: float, per_layer: float, capacity: int) -> int:
        """The cap the line predicts, in [0, L]."""
        if per_layer <= 0:
            return self.num_layers
        n = (capacity - fixed) / per_layer
        return min(max(math.floor(n), 0), self.num_layers) if math.isfinite(n) else 0

    def _memory_of(self, ctx: Context) -> Callable[[int, int, int], MemoryBreakdown]:
        """The context's stage memory by (layers, in flight, shards)."""
        hit = self._memory.get(ctx)
        if hit is None:
            group, tp, mb, first, last, rec = ctx
            hit = self._memory[ctx] = self.cm.stage_memory_at_layers(
                self.cm.cluster.groups[group].chip, tp, mb, first=first, last=last,
                recompute=rec)
        return hit

    def _line(self, ctx: Context) -> tuple[float, ...]:
        """Memory as a line in the layers per in-flight count: weights and gradients, the
        optimizer state (over the shards), activations per micro-batch per layer and at
        the ends, and the rest -- from the stage memory of 1 and 2 layers, 1 and 2 in
        flight (one shard)."""
        memory = self._memory_of(ctx)
        one, two, busy = memory(1, 1, 1), memory(2, 1, 1), memory(1, 2, 1)
        block = two.activations - one.activations
        ends = busy.activations - one.activations - block
        rest = one.reserve + one.activations - block - ends
        return (one.weights + one.grads, two.weights + two.grads - one.weights - one.grads,
                one.optimizer, two.optimizer - one.optimizer, block, ends, rest)

    def most(self, group: int, tp: int, mb: int, shards: int, allow_recompute: bool) -> int:
        """An upper bound on any stage's cap on this group, TP and micro-batch size: one
        micro-batch in flight, no embedding or head (the least memory), recompute or not."""
        plain = self.cap(group, tp, mb, False, False, False, 1, shards)
        if not allow_recompute:
            return plain
        return max(plain, self.cap(group, tp, mb, False, False, True, 1, shards))
