"""The pipeline's closed form, shared by the cost model and the planner's shapes.

`m` micro-batches through stages taking `t_i` (forward + backward of one micro-batch) with
boundaries taking `c_j` (activations forward or gradients back) last

    span(m) = fill + (m - 1) · beat(m),    fill = Σ t_i + 2 Σ c_j

fill and drain pass every stage once and cross every boundary twice. `beat(m)`, the seconds
each further micro-batch adds, is the slowest stage or link -- and, under 1F1B, no less than
`R / w` for every run of `w` consecutive stages s..u (w = u - s + 1 < m): stage s runs
`S - s` forwards before its first backward and stage u one less per stage, so stage s starts
micro-batch k + w's forward only after micro-batch k's round trip through s..u came back,
`R = Σ_{i=s..u} t_i + 2 Σ_{j=s..u-1} c_j` (Little's law over the run; the suffixes u = S - 1
are the stages' whole windows). With free links `R / w` never exceeds the slowest stage, so
a balanced pipeline keeps the textbook `(M + S - 1)·t`; with slow links (a bridge through
host memory, small micro-batches) it exposes the transfers 1F1B cannot hide, also between
two neighbours whose times differ. GPipe holds every micro-batch at once: no window.

Interleaved 1F1B (`interleaved_form`, Megatron's order: v model chunks per stage, micro-
batches in groups of S): each stage's micro-batch is v chunks of `t_i / v`, so the fill and
drain shrink by v -- `fill = Σ t_i / v + (1 - 1/v) max t_i` (uniform stages: the textbook
`(M + (S - 1)/v) t`) -- but a micro-batch crosses every boundary v times each way and the
wrap-around link from the last stage back to the first `v - 1` times: the fill's transfers
are `2 (v Σ c_j + (v - 1) c_wrap)`, a link carries `v` transfers per micro-batch each way
(beat >= v c_j), and once the pipeline runs more than one group, stage 0 (holding at most
`2S - 1` micro-batches in flight: Megatron's warm-up `vS + S - 1` chunks) waits for the
whole ring's round trip `R = Σ t_i + 2 (v Σ c_j + (v - 1) c_wrap)`: beat >= R / (2S - 1).
Zero bubble ZB-H1: `pipeline_zb.ZeroBubbleForm`. `schedule_form` picks the form.

Transfers not overlapped with compute (`overlap_p2p=False`, as DeepSpeed's pipeline engine
runs blocking sends and receives between its compute steps): stage i is busy, per
micro-batch, with its compute and its four transfers -- receive the activation, send its
own, receive the gradient, send the gradient back -- so in the beat its time is
`t_i + 2 (c_{i-1} + c_i)`, and a window's round trip through s..u is
`Σ t_i + 2 Σ_{j=s-1..u} c_j` (every boundary it touches, twice; an inner transfer blocks
both its stages at once). The fill is unchanged: a micro-batch's first pass still waits for
each transfer once each way, sender and receiver blocked together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polychip.costmodel.compute import StageTimes
    from polychip.costmodel.pipeline_zb import ZeroBubbleForm


@dataclass(frozen=True)
class PipelineForm:
    fill_s: float
    beats_s: tuple[float, ...]  # beats_s[k]: beat when m - 1 = k (k capped at len - 1)

    @staticmethod
    def of(
        stage_s: Sequence[float],
        link_s: Sequence[float],
        schedule: str,
        overlap_p2p: bool = True,
    ) -> PipelineForm:
        """`stage_s`: per stage, one micro-batch's forward + backward; `link_s`: per
        boundary, one transfer; `schedule`: 1f1b or gpipe (any other: 1F1B's form, which
        `schedule_form` refines for interleaved 1F1B and ZB-H1); `overlap_p2p`: False when
        a stage's sends and receives block its compute."""
        if len(link_s) != max(len(stage_s) - 1, 0):
            raise ValueError(f"{len(stage_s)} stages need {len(stage_s) - 1} links")
        fill = math.fsum(stage_s) + 2 * math.fsum(link_s)
        # an inner boundary's transfers: on the round trip (overlapped), or already inside
        # both neighbours' exposed times, of which the round trip holds them once
        inner = 2.0
        if not overlap_p2p:
            stage_s, inner = exposed_stage_s(stage_s, link_s), -2.0
        beat = max([*stage_s, *link_s])
        beats = [beat]
        if schedule != "gpipe":
            n = len(stage_s)
            # by window w: the slowest round trip over any w consecutive stages, per w
            worst = [0.0] * (n + 1)
            for s in range(n):
                trip = stage_s[s]
                if trip > worst[1]:
                    worst[1] = trip
                for u in range(s + 1, n):  # (comparisons, not max(): a planner's hot loop)
                    trip += stage_s[u] + inner * link_s[u - 1]
                    w = u - s + 1
                    per = trip / w
                    if per > worst[w]:
                        worst[w] = per
            for w in range(1, n + 1):
                beat = max(beat, worst[w])
                beats.append(beat)
        return PipelineForm(fill, tuple(beats))

    def beat_s(self, m: int) -> float:
        return self.beats_s[min(max(m - 1, 0), len(self.beats_s) - 1)]

    def span_s(self, m: int) -> float:
        """Seconds for `m` >= 1 micro-batches (non-decreasing in m)."""
        return self.fill_s + (m - 1) * self.beat_s(m)

    @property
    def bottleneck_s(self) -> float:
        """The slowest stage or link: the smallest beat, whatever m."""
        return self.beats_s[0]

    @property
    def floor_fill_s(self) -> float:
        """`span(m) >= floor_fill_s + (m - 1) bottleneck_s` for every m >= 1: the fill."""
        return self.fill_s

    @property
    def steady_beat_s(self) -> float:
        """The beat of a long pipeline (every window binding): the largest."""
        return self.beats_s[-1]


def exposed_stage_s(stage_s: Sequence[float], link_s: Sequence[float]) -> list[float]:
    """Each stage's time with its own transfers added (not overlapped): two per boundary it
    touches, the activation or gradient in, and out."""
    n = len(stage_s)
    return [
        t + 2 * ((link_s[i - 1] if i > 0 else 0.0) + (link_s[i] if i < n - 1 else 0.0))
        for i, t in enumerate(stage_s)
    ]


def interleaved_form(stage_s: Sequence[float], link_s: Sequence[float], v: int, wrap_s: float,
                     overlap_p2p: bool = True) -> PipelineForm:
    """Interleaved 1F1B with `v` chunks per stage (module docstring); `wrap_s`: one
    transfer from the last stage back to the first."""
    n = len(stage_s)
    if len(link_s) != max(n - 1, 0):
        raise ValueError(f"{n} stages need {n - 1} links")
    wrap = wrap_s if n > 1 and v > 1 else 0.0
    crossings = 2 * (v * math.fsum(link_s) + (v - 1) * wrap)
    fill = math.fsum(stage_s) / v + (1 - 1 / v) * max(stage_s) + crossings
    ring = math.fsum(stage_s) + crossings
    if not overlap_p2p:  # each chunk's transfers on both its boundaries, in every beat
        extra = [e - t for e, t in zip(exposed_stage_s(stage_s, link_s), stage_s, strict=True)]
        stage_s = [t + v * x for t, x in zip(stage_s, extra, strict=True)]
        if n > 1:
            stage_s[0] += 2 * (v - 1) * wrap
            stage_s[-1] += 2 * (v - 1) * wrap
    base = max([*stage_s, *(v * c for c in link_s), v * wrap])
    beats = [base] * n + [max(base, ring / (2 * n - 1))]  # more than one group: the ring
    return PipelineForm(fill, tuple(beats))


def schedule_form(schedule: str, stages: Sequence[StageTimes], link_s: Sequence[float],
                  overlap_p2p: bool = True, virtual_stages: int = 1, wrap_s: float = 0.0
                  ) -> PipelineForm | ZeroBubbleForm:
    """The closed form of `schedule` over `stages` (one micro-batch's forward, backward and
    its weight-gradient part on each stage, host work inside the forward) and the
    boundary transfers `link_s`; interleaved 1F1B also takes its `virtual_stages` and
    `wrap_s`, the transfer from the last stage back to the first."""
    totals = [st.total_s for st in stages]
    if schedule == "interleaved-1f1b" and virtual_stages > 1:
        return interleaved_form(totals, link_s, virtual_stages, wrap_s, overlap_p2p)
    if schedule == "zb-h1":
        from polychip.costmodel.pipeline_zb import ZeroBubbleForm

        fwd = [st.fwd_s for st in stages]
        if not overlap_p2p:  # its own transfers block the stage: charged to its forward
            fwd = [f + e - t for f, e, t in
                   zip(fwd, exposed_stage_s(totals, link_s), totals, strict=True)]
        return ZeroBubbleForm.of(fwd, [st.igrad_s for st in stages],
                                 [st.wgrad_s for st in stages], link_s)
    return PipelineForm.of(totals, link_s, schedule, overlap_p2p)
