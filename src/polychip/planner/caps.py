"""Memory caps: the most layers a stage holds within its chip's memory.

A stage's cap depends on its node group, TP degree, micro-batch size, whether it is the
first or last stage, recompute, the micro-batches it holds in flight and the replicas its
optimizer state is sharded over (ZeRO-1). It is found by bisection on the cost model's
stage memory (`CostModel.stage_memory`, the one memory formula). Memory never shrinks with
more micro-batches in flight nor grows with more shards, so the caps already found for
neighbouring contexts bracket the bisection: the same caps, with fewer memory checks.
"""

from __future__ import annotations

from polychip.costmodel import CostModel

Context = tuple[int, int, int, bool, bool, bool]  # group, tp, micro-batch, first, last, rec


class LayerCaps:
    def __init__(self, cm: CostModel):
        self.cm, self.num_layers = cm, cm.model.num_layers
        self._caps: dict[tuple, int] = {}
        self._known: dict[Context, list[tuple[int, int, int]]] = {}  # (in flight, shards, cap)

    def cap(self, group: int, tp: int, mb: int, first: bool, last: bool, rec: bool,
            in_flight: int, shards: int) -> int:
        """Most layers such a stage holds within its chip's memory (0: not even one)."""
        key = (group, tp, mb, first, last, rec, in_flight, shards)
        hit = self._caps.get(key)
        if hit is not None:
            return hit
        ctx = key[:6]
        lo, hi = 0, self.num_layers
        for f, s, c in self._known.get(ctx, ()):
            if f >= in_flight and s <= shards:  # at least as much memory: holds no more
                lo = max(lo, c)
            if f <= in_flight and s >= shards:  # at most as much memory: holds no fewer
                hi = min(hi, c)
        chip = self.cm.cluster.groups[group].chip
        while lo < hi:
            mid = (lo + hi + 1) // 2
            mem = self.cm.stage_memory(
                chip, mid, tp, mb, first=first, last=last, in_flight=in_flight,
                recompute=rec, zero_shards=shards,
            )  # fmt: skip
            if mem.total <= chip.memory_bytes:
                lo = mid
            else:
                hi = mid - 1
        self._caps[key] = lo
        self._known.setdefault(ctx, []).append((in_flight, shards, lo))
        return lo

    def most(self, group: int, tp: int, mb: int, shards: int, allow_recompute: bool) -> int:
        """An upper bound on any stage's cap on this group, TP and micro-batch size: one
        micro-batch in flight, no embedding or head (the least memory), recompute or not."""
        plain = self.cap(group, tp, mb, False, False, False, 1, shards)
        if not allow_recompute:
            return plain
        return max(plain, self.cap(group, tp, mb, False, False, True, 1, shards))
