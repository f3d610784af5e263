"""Replica shapes: a template with its micro-batch size, layer split and recompute choice,
timed with the cost model's own components.

A shape's pipeline takes `form.span_s(m)` seconds for `m` micro-batches -- the cost
model's closed form (`costmodel.pipeline.PipelineForm`, as `CostModel.pipeline_time_s`) with
the stage and link times it gives. Stage and link times assume the canonical placement of
`assign.py`: a segment that fits in one node sits in one node; a larger one starts on a
fresh node.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

from polychip.costmodel import CostModel
from polychip.costmodel.gradsync import stage_ends
from polychip.costmodel.memory import in_flight_micro_batches
from polychip.costmodel.pipeline import PipelineForm, exposed_stage_s, schedule_form
from polychip.costmodel.pipeline_zb import ZeroBubbleForm
from polychip.plan.plan import Replica, Stage
from polychip.planner.layersplit import INF, split_layers
from polychip.planner.space import Template, canonical_slots, template_devices, template_stages
from polychip.planner.stagetable import StageTable


@dataclass(frozen=True)
class Shape:
    template: Template
    micro_batch_size: int
    layers: tuple[int, ...]  # per stage
    recompute: tuple[bool, ...]  # per stage
    form: PipelineForm | ZeroBubbleForm  # the cost model's closed form of its schedule
    zero_shards: int  # memory was checked with optimizer state sharded this many ways
    max_micro_batches: int | None  # memory limit on micro-batches per step (GPipe)

    def time_s(self, m: int) -> float:
        return self.form.span_s(m)

    @cached_property
    def first_s(self) -> float:
        """Pipeline seconds with one micro-batch."""
        return self.form.span_s(1)

    @cached_property
    def fill_s(self) -> float:
        """The intercept of the long pipeline's line, `time_s(m) ~ fill_s + (m - 1) beat_s`
        (1F1B, GPipe: its time with one micro-batch; ZB-H1: below it, past the ramp)."""
        return self.form.fill_s

    @cached_property
    def beat_s(self) -> float:
        """Seconds each further micro-batch adds in a long pipeline."""
        return self.form.steady_beat_s

    @cached_property
    def devices(self) -> dict[int, int]:
        return template_devices(self.template)

    @cached_property
    def num_devices(self) -> int:
        return sum(seg.num_devices for seg in self.template)

    @property
    def num_stages(self) -> int:
        return len(self.layers)

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(seg.group for seg in self.template)

    @cached_property
    def stage_groups(self) -> list[tuple[int, int]]:
        """(group, TP degree) of every stage."""
        return [(seg.group, seg.tp) for seg in self.template for _ in range(seg.num_stages)]

    @cached_property
    def intervals(self) -> list[tuple[int, int, int]]:
        """(first layer, end layer, stage) of every stage."""
        starts = list(itertools.accumulate(self.layers, initial=0))
        return [(a, b, i) for i, (a, b) in enumerate(itertools.pairwise(starts))]

    @cached_property
    def rate(self) -> float:
        """Sequences per second in the steady state."""
        return self.micro_batch_size / self.beat_s


class ShapeBuilder:
    """Builds shapes for one cost model and schedule; caches shapes, their rows and splits
    (stage rows, memory caps and link times: the cost model's `StageTable`)."""

    def __init__(self, cm: CostModel, schedule: str, virtual_stages: int = 1):
        self.cm, self.schedule, self.virtual_stages = cm, schedule, virtual_stages
        self.cluster, self.model, self.job = cm.cluster, cm.model, cm.job
        self.num_layers = self.model.num_layers
        self.table = StageTable.of(cm)  # shared by every builder of ``cm``
        self.caps = self.table.caps
        self.time_row, self.link_times = self.table.time_row, self.table.link_times
        self._shapes: dict[tuple, Shape | None] = {}
        self._splits = self.table.splits
        self._template_rows: dict[tuple, tuple] = {}
        self._ready: dict[tuple, tuple[float, ...]] = {}
        self._forms: dict[tuple, PipelineForm | ZeroBubbleForm] = {}
        self._flight_rows: dict[tuple[int, int | None], list[int]] = {}

    # ---- shapes ---------------------------------------------------------------------------
    def build(
        self,
        template: Template,
        mb: int,
        shards: int = 1,
        micro_batches: int | None = None,
        weight: float = INF,
        layers: tuple[int, ...] | None = None,
        keep: bool = True,
    ) -> Shape | None:
        """The best split of `template` (or the given `layers`) for `micro_batches` per step
        (None: many) with optimizer state over `shards`; None if it cannot fit memory.
        `keep=False`: not cached (the oracle streams every composition)."""
        key = (template, mb, shards, micro_batches, weight, layers)
        if key in self._shapes:
            return self._shapes[key]
        allow_rec = self.job.allow_recompute
        if layers is None and sum(seg.num_stages * self.caps.most(seg.group, seg.tp, mb, shards,
                                                                  allow_rec)
                                  for seg in template) < self.num_layers:
            if keep:  # not all the layers fit, however split: no shape
                self._shapes[key] = None
            return None
        rows, norec, rkeys = self._rows_of(template, mb, shards, micro_batches, keep)
        links = self.link_times(template, mb)
        if layers is None:  # equal rows (other memory contexts, same caps): the same split
            skey = (template, mb, weight, rkeys, self.schedule == "gpipe")  # 1F1B's windows
            # bind every other schedule's split (`_split`)
            if skey not in self._splits:
                self._splits[skey] = self._split(rows, links, weight)
            chosen = self._splits[skey]
        else:
            ok = all(rows[s][n] < INF for s, n in enumerate(layers))
            chosen = layers if ok else None
        shape = None
        if chosen is not None:
            costs = [rows[s][n] for s, n in enumerate(chosen)]
            rec = tuple(n > norec[s] for s, n in enumerate(chosen))
            limit = None  # 1F1B: memory was checked for min(S - i, micro_batches) in flight
            if micro_batches is not None and micro_batches < len(rows):
                limit = micro_batches
            if self.schedule == "gpipe":
                limit = self._gpipe_limit(template, mb, chosen, rec, shards)
            if limit != 0:
                fkey = (template, mb, chosen, rec)  # the same in every memory context
                form = self._forms.get(fkey)
                if form is None:
                    form = self._form(template, mb, chosen, rec, costs, links)
                    if keep:
                        self._forms[fkey] = form
                shape = Shape(template, mb, chosen, rec, form, shards, limit)
        if keep:
            self._shapes[key] = shape
        return shape

    def _form(self, template: Template, mb: int, layers: tuple[int, ...],
              rec: tuple[bool, ...], costs: list[float], links: list[float]
              ) -> PipelineForm | ZeroBubbleForm:
        """The cost model's closed form of the schedule (`pipeline.schedule_form`) over the
        stage times of this split; ZB-H1's needs each stage's forward, B and W apart."""
        if self.schedule != "zb-h1":
            return PipelineForm.of(costs, links, self.schedule, self.job.overlap_p2p)
        stages = template_stages(template)
        times = [self.cm.stage_times(self.cluster.groups[g].chip, n, t, mb, i == 0,
                                     i == len(stages) - 1, r).split_backward()
                 for i, ((g, t), n, r) in enumerate(zip(stages, layers, rec, strict=True))]
        return schedule_form(self.schedule, times, links, self.job.overlap_p2p)

    def _rows_of(self, template: Template, mb: int, shards: int, micro_batches: int | None,
                 keep: bool) -> tuple[list[list[float]], list[int], tuple[tuple, ...]]:
        """Per stage its cost row (seconds per micro-batch holding n = 0..L layers: without
        recompute up to its plain cap, with it up to its recompute cap, INF beyond), its
        plain cap and the row's key (``keep``: cached per template and memory context)."""
        ckey = (template, mb, shards, micro_batches)
        hit = self._template_rows.get(ckey)
        if hit is not None:
            return hit
        stages = template_stages(template)
        out = self.table.rows_of(stages, mb, self._flights(len(stages), micro_batches), shards)
        if keep:
            self._template_rows[ckey] = out
        return out

    def _flights(self, num: int, micro_batches: int | None) -> list[int]:
        """Per stage of a pipeline of `num` stages, the micro-batches it holds in flight
        (`memory.in_flight_micro_batches`; many micro-batches: GPipe's one, as the batch
        split caps m by memory, `_gpipe_limit`), cached."""
        key = (num, micro_batches)
        hit = self._flight_rows.get(key)
        if hit is None:
            if self.schedule == "gpipe" and micro_batches is None:
                hit = [1] * num
            else:
                m = 10**9 if micro_batches is None else micro_batches
                hit = [in_flight_micro_batches(self.schedule, i, num, m, self.virtual_stages)
                       for i in range(num)]
            self._flight_rows[key] = hit
        return hit

    def _split(
        self, rows: list[list[float]], links: list[float], weight: float
    ) -> tuple[int, ...] | None:
        """The layer split minimising the closed form's beat (planner/layersplit.py)."""
        num = len(rows)
        w = weight if weight == INF else max(weight, 0.0)
        # 1F1B: the first stage's window of S micro-batches binds once m - 1 >= S; its round
        # trip crosses every link twice, which transfers not overlapped already put (four
        # times) into the stages' own times
        binds = self.schedule != "gpipe" and w >= num
        overlap = self.job.overlap_p2p
        window = (2 if overlap else -2) * math.fsum(links) if binds else None
        if not overlap:
            extra = exposed_stage_s([0.0] * num, links)
            rows = [[x + e for x in row] for row, e in zip(rows, extra, strict=True)]
        split = split_layers(
            rows, self.num_layers, weight=w, floor=max(links, default=0.0), window=window,
            max_bottlenecks=24,
        )  # fmt: skip
        return None if split is None else split.layers

    def _gpipe_limit(
        self,
        template: Template,
        mb: int,
        layers: tuple[int, ...],
        rec: tuple[bool, ...],
        shards: int,
    ) -> int:
        """Under GPipe every stage holds all m micro-batches: the largest m that fits."""
        stages = template_stages(template)

        def fits(m: int) -> bool:
            return all(
                layers[i]
                <= self.caps.cap(g, t, mb, i == 0, i == len(stages) - 1, rec[i], m, shards)
                for i, (g, t) in enumerate(stages)
            )

        lo, hi = 0, max(1, self.job.global_batch // mb)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def ready_s(self, shape: Shape) -> tuple[float, ...]:
        """Per stage, how long before the end of the shape's pipeline its gradients are
        final: `gradsync.stage_ends` of its replica in canonical placement running S
        micro-batches (ZB-H1: every stage's full tail of W's), cached per split."""
        key = (shape.template, shape.micro_batch_size, shape.layers, shape.recompute)
        hit = self._ready.get(key)
        if hit is None:
            rep = self.representative(shape, shape.micro_batch_size * shape.num_stages)
            ends = stage_ends(self.cm, rep, 0.0, self.schedule, self.virtual_stages)
            hit = self._ready[key] = tuple(-e for e in ends)
        return hit

    def representative(self, shape: Shape, batch_size: int | None = None) -> Replica:
        """One replica of the shape in canonical placement on the first nodes of its groups."""
        stages = []
        start = 0
        segs = [s for s in shape.template for _ in range(s.num_stages)]
        for i, (seg, (off, slot)) in enumerate(
            zip(segs, canonical_slots(self, shape.template), strict=True)
        ):
            group = self.cluster.groups[seg.group]
            stages.append(
                Stage(
                    start,
                    start + shape.layers[i],
                    self.cluster.first_node(group) + off,
                    tuple(range(slot, slot + seg.tp)),
                    group.chip.name,
                    shape.recompute[i],
                )
            )
            start += shape.layers[i]
        mb = shape.micro_batch_size
        return Replica(tuple(stages), batch_size or mb, mb)
