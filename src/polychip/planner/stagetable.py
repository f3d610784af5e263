"""What every `ShapeBuilder` of one cost model shares, whatever its schedule: memory caps,
stage time rows, the cost rows they make per stage context, link times and layer splits.

A stage's cost row depends on its group, TP degree, micro-batch size, whether it is the
first or last stage, the micro-batches it holds in flight and the ZeRO shards -- not on
the schedule, which only decides the in-flight count. The fast search builds shapes for
1F1B, then for ZB-H1 (other memory) and re-prices them for the other schedules: one table
per cost model serves them all (`StageTable.of`), so no cap is bisected twice.
"""

from __future__ import annotations

import itertools
import weakref

from polychip.costmodel import CostModel
from polychip.planner.caps import LayerCaps
from polychip.planner.layersplit import INF
from polychip.planner.space import Template, canonical_slots

Row = tuple[list[float], int, tuple]  # cost row, plain cap, the row's key

_TABLES: weakref.WeakKeyDictionary[CostModel, StageTable] = weakref.WeakKeyDictionary()


class StageTable:
    def __init__(self, cm: CostModel):
        self.cm, self.cluster, self.job = cm, cm.cluster, cm.job
        self.num_layers = cm.model.num_layers
        self.caps = LayerCaps(cm)
        self._times: dict[tuple, list[float]] = {}
        self._rows: dict[tuple, list[float]] = {}
        self._contexts: dict[tuple, Row] = {}
        self._links: dict[tuple, list[float]] = {}
        # layer splits by template, micro-batch, weight, rows and whether GPipe
        # (`ShapeBuilder.build`): the split depends on nothing else
        self.splits: dict[tuple, tuple[int, ...] | None] = {}

    @classmethod
    def of(cls, cm: CostModel) -> StageTable:
        """The one table of ``cm`` (made on first use, gone with ``cm``)."""
        table = _TABLES.get(cm)
        if table is None:
            table = _TABLES[cm] = cls(cm)
        return table

    def time_row(self, group: int, tp: int, mb: int, first: bool, last: bool, rec: bool
                 ) -> list[float]:
        """Seconds of one micro-batch on a stage holding n = 0..L layers."""
        key = (group, tp, mb, first, last, rec)
        row = self._times.get(key)
        if row is None:
            of = self.cm.stage_times_by_layers(self.cluster.groups[group].chip, tp, mb, first,
                                               last, rec)
            row = self._times[key] = [of(n).total_s for n in range(self.num_layers + 1)]
        return row

    def stage_row(self, g: int, t: int, mb: int, first: bool, last: bool, flight: int,
                  shards: int) -> Row:
        """One stage's cost row (seconds per micro-batch holding n = 0..L layers: without
        recompute up to its plain cap, with it up to its recompute cap, INF beyond), its
        plain cap and the row's key: one row per distinct caps, cached per context."""
        ctx = (g, t, mb, first, last, flight, shards)
        hit = self._contexts.get(ctx)
        if hit is not None:
            return hit
        cap0 = cap1 = self.caps.cap(g, t, mb, first, last, False, flight, shards)
        if self.job.allow_recompute:
            cap1 = self.caps.cap(g, t, mb, first, last, True, flight, shards)
        rkey = (g, t, mb, first, last, cap0, cap1)
        row = self._rows.get(rkey)
        if row is None:
            plain = self.time_row(g, t, mb, first, last, False)
            recom = self.time_row(g, t, mb, first, last, True)
            row = self._rows[rkey] = [
                plain[n] if n <= cap0 else recom[n] if n <= cap1 else INF
                for n in range(self.num_layers + 1)
            ]
        hit = self._contexts[ctx] = (row, cap0, rkey)
        return hit

    def rows_of(self, stages: list[tuple[int, int]], mb: int, flights: list[int], shards: int
                ) -> tuple[list[list[float]], list[int], tuple[tuple, ...]]:
        """`stage_row` of every stage of a pipeline ((group, TP) per stage, the
        micro-batches each holds in flight): the rows, plain caps and row keys."""
        rows, norec, rkeys = [], [], []
        contexts, last = self._contexts, len(stages) - 1
        for i, (g, t) in enumerate(stages):
            hit = contexts.get((g, t, mb, i == 0, i == last, flights[i], shards))
            if hit is None:
                hit = self.stage_row(g, t, mb, i == 0, i == last, flights[i], shards)
            rows.append(hit[0])
            norec.append(hit[1])
            rkeys.append(hit[2])
        return rows, norec, tuple(rkeys)

    def link_times(self, template: Template, mb: int) -> list[float]:
        """Seconds to pass one micro-batch's activations across each stage boundary, in
        canonical placement."""
        key = (template, mb)
        hit = self._links.get(key)
        if hit is not None:
            return hit
        nodes = []
        for seg, (off, _) in zip(
            [s for s in template for _ in range(s.num_stages)],
            canonical_slots(self.cluster, template),
            strict=True,
        ):
            nodes.append(self.cluster.first_node(self.cluster.groups[seg.group]) + off)
        size = self.cm.activation_bytes(mb)
        out = [self.cm.transfer_time_s(a, b, size) for a, b in itertools.pairwise(nodes)]
        self._links[key] = out
        return out
