"""The exhaustive oracle's size, estimated before it searches, and its budget.

The oracle (`exhaustive.py`) first builds, for every kind (template x micro-batch size),
every composition of the layers over its stages, once, at the loosest memory context: that
pass is unconditional, so its size is a certain lower bound on the oracle's work. It is
counted without enumerating anything: templates are counted by their number of stages (a
convolution of each node group's (stages, TP) segments, times the k! orders of k groups),
and a template of S stages has C(L - 1, S - 1) layer splits. Seconds per shape are timed
on a sample of this very job's deepest template. The rest of the search (other memory
contexts, micro-batch counts, multisets of replicas) is pruned by exact bounds and cannot
be sized in advance; `--time-limit` bounds it (the plan is then labelled not proven).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from polychip.planner.shapes import ShapeBuilder
from polychip.planner.space import Segment, micro_batch_sizes, segments_of
from polychip.spec.errors import PolychipError

DEFAULT_TIME_LIMIT_S = 600.0
SAMPLE_SHAPES = 24
# Measured on the project's 2-core box (benchmarks/RESULTS.md, fast vs exhaustive): the
# whole search built at most 7.2 times the first pass's layer splits. Its multiset walk is
# NOT covered: wall time reached 19x (and > 44x, stopped) the first pass's; the deadline
# bounds that part.
FOLLOW_UP_FACTOR = 8.0


@dataclass(frozen=True)
class OracleSize:
    templates: int
    kinds: int  # templates x micro-batch sizes
    first_pass_shapes: int  # layer splits built once per kind: certain work
    seconds_per_shape: float  # timed on a sample of this job

    @property
    def first_pass_s(self) -> float:
        return self.first_pass_shapes * self.seconds_per_shape

    @property
    def estimated_s(self) -> float:
        """The first pass times FOLLOW_UP_FACTOR (an empirical figure, not a bound)."""
        return self.first_pass_s * FOLLOW_UP_FACTOR

    def describe(self) -> str:
        return (
            f"{self.templates:,} pipeline templates x micro-batch sizes = {self.kinds:,} kinds, "
            f"{self.first_pass_shapes:,} layer splits to build at least once "
            f"({self.seconds_per_shape * 1e6:.0f} us each here: {_seconds(self.first_pass_s)}; "
            f"about {_seconds(self.estimated_s)} with the search after it)"
        )


def stage_histogram(segments: Sequence[Segment], max_stages: int) -> list[int]:
    """hist[s]: how many of `segments` have s stages."""
    hist = [0] * (max_stages + 1)
    for seg in segments:
        if seg.num_stages <= max_stages:
            hist[seg.num_stages] += 1
    return hist


def count_templates(builder: ShapeBuilder, max_stages: int, groups: Sequence[int]) -> list[int]:
    """count[s]: templates over `groups` with s stages in all (space.all_templates, counted
    without enumerating: an ordered choice of k distinct groups, one segment each)."""
    cm = builder.cm
    hists = [
        stage_histogram(segments_of(cm.cluster.groups[i], cm.model, builder.job, max_stages),
                        max_stages)
        for i in groups
    ]
    total = [0] * (max_stages + 1)
    for k in range(1, len(hists) + 1):
        for subset in itertools.combinations(hists, k):
            conv = [1] + [0] * max_stages
            for h in subset:
                conv = [
                    sum(conv[a] * h[s - a] for a in range(s + 1)) for s in range(max_stages + 1)
                ]
            for s in range(max_stages + 1):
                total[s] += math.factorial(k) * conv[s]
    return total


def size_of(builder: ShapeBuilder, max_stages: int, groups: Sequence[int]) -> OracleSize:
    """The oracle's size over `groups`, with seconds per shape timed on a sample."""
    layers = builder.cm.model.num_layers
    counts = count_templates(builder, max_stages, groups)
    sizes = micro_batch_sizes(builder.job.global_batch)
    splits = sum(n * math.comb(layers - 1, s - 1) for s, n in enumerate(counts) if s >= 1)
    templates = sum(counts)
    return OracleSize(templates, templates * len(sizes), splits * len(sizes),
                      _time_sample(builder, max_stages, groups))


def _time_sample(builder: ShapeBuilder, max_stages: int, groups: Sequence[int]) -> float:
    """Seconds per shape built, on the first compositions of the deepest one-group
    template (cold caches included: it errs towards slow)."""
    cm = builder.cm
    segs = [s for i in groups for s in segments_of(cm.cluster.groups[i], cm.model, builder.job,
                                                     max_stages)]
    if not segs:
        return 0.0
    seg = max(segs, key=lambda s: (s.num_stages, -s.tp))
    stages, layers = seg.num_stages, cm.model.num_layers
    start = time.perf_counter()
    built = 0
    for cuts in itertools.islice(itertools.combinations(range(1, layers), stages - 1),
                                 SAMPLE_SHAPES):
        bounds = (0, *cuts, layers)
        split = tuple(b - a for a, b in itertools.pairwise(bounds))
        builder.build((seg,), 1, 1, 1, layers=split, keep=False)
        built += 1
    return (time.perf_counter() - start) / max(built, 1)


def check_budget(size: OracleSize, time_limit_s: float, max_stages: int) -> None:
    """Refuse (PolychipError, exit 2) a space whose estimated time exceeds the budget."""
    if size.estimated_s <= time_limit_s:
        return
    raise PolychipError(
        f"--exhaustive refused: {size.describe()}, over the --time-limit of "
        f"{_seconds(time_limit_s)}. The oracle is for small spaces: lower --max-stages "
        f"(now {max_stages}; layer splits grow as C(layers - 1, stages - 1)), plan fewer "
        "chips or chip types, raise --time-limit, or drop --exhaustive"
    )


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 86400 * 365 * 100:
        return f"{s / 3600:,.0f} h"
    return f"{s:.1e} s"
