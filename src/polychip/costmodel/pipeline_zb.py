"""The zero-bubble ZB-H1 pipeline's closed form (Qi et al. 2023, "Zero Bubble Pipeline
Parallelism"; the order of `plan.schedule.zb_h1_order`).

Each stage splits its backward into B (the input gradient, which the stage before waits
for) and W (the weight gradient, which nobody waits for); stage p runs 1F1B's order with B
in place of the backward and delays each W by p backwards, so it ends with min(p + 1, m)
W's after its last B. Per stage, `f`, `b` (B only) and `w` seconds, `t = f + b + w`; `c_j`
the boundary transfers; `k_i = min(i + 1, m)`.

The step is the longest of two kinds of dependency chain:

- **Compute chains** (one per stage k, `_chains_s`): the first micro-batch reaches stage k
  (`A_k = Σ_{i<k} f_i + c_i`); stage k runs its `min(S - k, m)` forwards while that
  micro-batch's round trip through the later stages (`RT_k = Σ_{j>k} f_j + b_j + 2 Σ_{j>=k}
  c_j`: their B's only, their W's are deferred) comes back; then all its work, `m t_k` in
  all, ends with its last `k_k` W's; its last B's input gradient walks back to every earlier
  stage i (`Σ_{i<=j<k} b_j + c_j`), which then runs its own last `k_i` W's:

      chain_k = A_k + max(n f_k, f_k + RT_k) - n f_k + m t_k - k_k w_k
                + max_{i<=k} (Σ_{i<=j<k} (b_j + c_j) + k_i w_i),     n = min(S - k, m)

  With uniform stages (m >= S) the last stage's chain is the step: `m t + (S - 1)(f + b -
  w)` when `b >= w`, else `m t + (S - 1) f` -- the bubble `(S - 1)(f + b - w)` of the paper's
  ZB-H1, at least `(S - 1) f`, against 1F1B's `(S - 1)(f + b + w)`.
- **Link chains** (slow links: the transfers, not the stages, set the pace): as 1F1B's form
  (`pipeline.py`), the first micro-batch's trip with B's only, `Σ (f_i + b_i) + 2 Σ c_j`,
  plus the W's still to run after stage 0's last B (`max_i (k_i w_i - Σ_{j<i} (b_j +
  c_j))`), plus `(m - 1)` beats of the slowest link or window round trip `R / w` over runs
  of `w >= 2` stages, `R = Σ_{s..u} (f_i + b_i) + 2 Σ c_j + w_s` (stage s runs its W
  between a B and its next forward). While the stages are the bottleneck the last stage's
  deferred W's overlap the fill, `(k_{S-1} - 1) w_{S-1}`; that credit shrinks by the idle
  time a link-bound beat leaves, `(m - 1)(beat - max t)`, so the two chains join smoothly.

Validated against the event replay (tests/costmodel/test_schedule_forms.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class ZeroBubbleForm:
    f: tuple[float, ...]  # per stage: forward (+ host work)
    b: tuple[float, ...]  # the input-gradient half of the backward
    w: tuple[float, ...]  # the weight-gradient half
    c: tuple[float, ...]  # per boundary: one transfer
    link_beats: tuple[float, ...]  # link_beats[k]: slowest link or window when m - 1 = k

    @staticmethod
    def of(f: Sequence[float], b: Sequence[float], w: Sequence[float],
           link_s: Sequence[float]) -> ZeroBubbleForm:
        n = len(f)
        if not len(b) == len(w) == n or len(link_s) != max(n - 1, 0):
            raise ValueError(f"{n} stages need {n} B and W times and {n - 1} links")
        worst = [0.0] * (n + 1)  # by window w >= 2: the slowest round trip over w stages
        for s in range(n):
            trip = f[s] + b[s] + w[s]
            for u in range(s + 1, n):  # (comparisons, not max(): a planner's hot loop)
                trip += f[u] + b[u] + 2 * link_s[u - 1]
                per = trip / (u - s + 1)
                if per > worst[u - s + 1]:
                    worst[u - s + 1] = per
        beats = [max(link_s, default=0.0)]
        for k in range(1, n + 1):
            beats.append(max(beats[-1], worst[k]))
        return ZeroBubbleForm(tuple(f), tuple(b), tuple(w), tuple(link_s), tuple(beats))

    @property
    def num_stages(self) -> int:
        return len(self.f)

    @cached_property
    def totals_s(self) -> tuple[float, ...]:
        """Per stage, `f + b + w`."""
        return tuple(self.f[i] + self.b[i] + self.w[i] for i in range(self.num_stages))

    @cached_property
    def compute_beat_s(self) -> float:
        return max(self.totals_s)

    def link_beat_s(self, m: int) -> float:
        return self.link_beats[min(max(m - 1, 0), len(self.link_beats) - 1)]

    def beat_s(self, m: int) -> float:
        """Seconds a further micro-batch adds once the pipeline is full."""
        return max(self.compute_beat_s, self.link_beat_s(m))

    @property
    def bottleneck_s(self) -> float:
        return max(self.compute_beat_s, max(self.c, default=0.0))

    @property
    def steady_beat_s(self) -> float:
        return self.beat_s(10**9)

    @cached_property
    def fill_s(self) -> float:
        """The long pipeline's intercept: span(m) ~ fill_s + (m - 1) * steady_beat_s."""
        m = 2 * self.num_stages + 1
        return self.span_s(m) - (m - 1) * self.steady_beat_s

    @cached_property
    def floor_fill_s(self) -> float:
        """The largest `a` with `span(m) >= a + (m - 1) bottleneck_s` for every m >= 1 (a
        lower line for bounds; the ramp makes span(1) too high for one): the least
        `span(m) - (m - 1) bottleneck` below S micro-batches, and from S on what the lines
        of `_long` guarantee -- the slowest stage's chain `a_k + m t_k` when it is the
        bottleneck, else the link chain, whose beat is never below the slowest link and
        whose credit is at most `(S - 1) w_last`."""
        n, b = self.num_stages, self.bottleneck_s
        lines, fixed = self._long
        ramp = min((self.span_s(m) - (m - 1) * b for m in range(1, n)), default=math.inf)
        if self.compute_beat_s >= b:
            a, t = max(lines, key=lambda line: line[1])
            return min(ramp, a + t)
        return min(ramp, fixed - (n - 1) * self.w[-1])

    @cached_property
    def _spans(self) -> dict[int, float]:
        return {}

    def span_s(self, m: int) -> float:
        """Seconds for `m` >= 1 micro-batches: the longest chain (kept per m: a planner
        asks the same form many times)."""
        hit = self._spans.get(m)
        if hit is None:
            if m >= self.num_stages:
                lines, fixed = self._long
                hit = max(0.0, *(a + m * t for a, t in lines), fixed + self._link_rest_s(m))
            else:
                hit = max(self._chains_s(m), self._link_chain_s(m))
            self._spans[m] = hit
        return hit

    @cached_property
    def _long(self) -> tuple[tuple[tuple[float, float], ...], float]:
        """From m >= S on, `min(k + 1, m)` and `min(S - k, m)` stay put: chain k is
        `a_k + m t_k` (`_chains_s` with its terms regrouped) and the link chain's trip and
        tail are fixed (`_link_chain_s`)."""
        f, b, c, w, n = self.f, self.b, self.c, self.w, self.num_stages
        reach, tail, lines = 0.0, 0.0, []
        trip = math.fsum(f[1:]) + math.fsum(b[1:]) + 2 * math.fsum(c)  # RT_0
        for k in range(n):
            tail = max(tail + (b[k - 1] + c[k - 1] if k else 0.0), (k + 1) * w[k])
            first = max((n - k) * f[k], f[k] + trip) - (n - k) * f[k]
            lines.append((reach + first - (k + 1) * w[k] + tail, self.totals_s[k]))
            if k + 1 < n:
                reach += f[k] + c[k]
                trip -= f[k + 1] + b[k + 1] + 2 * c[k]
        before, link_tail = 0.0, -math.inf
        for i in range(n):
            link_tail = max(link_tail, (i + 1) * w[i] - before)
            if i + 1 < n:
                before += b[i] + c[i]
        trip = math.fsum(f) + math.fsum(b) + 2 * math.fsum(c)
        return tuple(lines), trip + link_tail

    def _link_rest_s(self, m: int) -> float:
        """The link chain's part that depends on m >= S: its beats, less the credit."""
        beat = self.link_beat_s(m)
        slack = (m - 1) * max(0.0, beat - self.compute_beat_s)
        credit = max(0.0, (self.num_stages - 1) * self.w[-1] - slack)
        return (m - 1) * beat - credit

    def _chains_s(self, m: int) -> float:
        f, b, c, w, n = self.f, self.b, self.c, self.w, self.num_stages
        reach, longest = 0.0, 0.0
        trip = math.fsum(f[1:]) + math.fsum(b[1:]) + 2 * math.fsum(c)  # RT_0
        tail = 0.0  # max_{i<=k} (Σ_{i<=j<k} (b_j + c_j) + k_i w_i)
        for k in range(n):
            tail = max(tail + (b[k - 1] + c[k - 1] if k else 0.0), min(k + 1, m) * w[k])
            warm = min(n - k, m)
            first = max(warm * f[k], f[k] + trip) - warm * f[k]
            own = m * self.totals_s[k] - min(k + 1, m) * w[k]
            longest = max(longest, reach + first + own + tail)
            if k + 1 < n:
                reach += f[k] + c[k]
                trip -= f[k + 1] + b[k + 1] + 2 * c[k]
        return longest

    def _link_chain_s(self, m: int) -> float:
        n = self.num_stages
        trip = math.fsum(self.f) + math.fsum(self.b) + 2 * math.fsum(self.c)
        before = 0.0
        tail = -math.inf
        for i in range(n):
            tail = max(tail, min(i + 1, m) * self.w[i] - before)
            if i + 1 < n:
                before += self.b[i] + self.c[i]
        beat = self.link_beat_s(m)
        slack = (m - 1) * max(0.0, beat - self.compute_beat_s)
        credit = max(0.0, (min(n, m) - 1) * self.w[-1] - slack)
        return trip + tail - credit + (m - 1) * beat
