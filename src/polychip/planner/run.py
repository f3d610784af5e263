"""One `search_plans` call's searches (planner/api.py): each chip type alone, all chips,
the ZB-H1 refit, the schedule step and the re-ranking, with the progress they report and
whether the oracle proved every answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from polychip.costmodel import CostModel
from polychip.plan.plan import Plan
from polychip.planner.exhaustive import Exhaustive
from polychip.planner.gcpause import gc_resumed
from polychip.planner.rerank import Candidate, rerank, shortlist
from polychip.planner.schedules import Option, Step, step
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder

Progress = Callable[[float, str], None]


@dataclass
class SearchRun:
    """One `search_plans` call's searches: the progress they report (``steps`` parts) and
    whether the oracle proved every answer (False once ``deadline`` cut one short)."""

    scorer: Scorer
    stages: int
    report: Progress
    steps: int
    exhaustive: bool
    deadline: float
    done: int = 0
    proven: bool = True
    pool: list = field(default_factory=list)  # the fast search's candidates on every group

    def search(self, groups: list[int], label: str) -> Scored | None:
        """The fastest plan on node ``groups`` (fast search, then the oracle if asked); the
        fast search over every group is kept (`pool`)."""
        fast = FastSearch(self.scorer, self.stages, self._part(label))
        result = fast.run(groups)
        if len(groups) == len(self.scorer.cm.cluster.groups):
            self.pool = fast.pool
        if self.exhaustive:
            exact = Exhaustive(self.scorer, self.stages, progress=self._part(label),
                               deadline=self.deadline)
            result = exact.run(groups, incumbent=result)
            self.proven = self.proven and exact.proven
        self.done += 1
        return result

    def refit(self, scorer: Scorer, label: str) -> Scored | None:
        """The fast search's candidates over every group, refitted by ``scorer``'s builder
        (`FastSearch.refit`)."""
        result = FastSearch(scorer, self.stages, self._part(label)).refit(self.pool)
        self.done += 1
        return result

    def _part(self, label: str) -> Progress:
        """Progress of the search now starting: its share of the run."""
        base, span = self.done / self.steps, 1 / self.steps

        def sub(f: float, msg: str) -> None:
            self.report(min(base + f * span, 1.0), f"{label}: {msg}")

        return sub

    def every_type(self, types: dict[str, list[int]], num_groups: int
                   ) -> tuple[dict[str, Scored | None], Scored | None]:
        """Each chip type alone, then (two or more types) all chips; the per-type bests and
        the best overall (single-type plans are part of the space)."""
        alone = {chip: self.search(groups, f"{chip} only") for chip, groups in types.items()}
        best = None
        for result in alone.values():
            best = better(best, result)
        if len(types) > 1:
            best = better(best, self.search(list(range(num_groups)), "all chips"))
        return alone, best

    def schedules(self, cm: CostModel, fastest: Scored, alone: dict[str, Scored | None],
                  opts: list[Option], zb_search: bool) -> Step:
        """The schedule step (planner/schedules.py) over the search's candidates and, with
        ``zb_search``, those of the search over all chips refitted to ZB-H1's memory and
        closed form."""
        pool, builders = self.scorer.scored(), {}
        if zb_search:
            zb = Scorer(ShapeBuilder(cm, "zb-h1"), prune=self.scorer.prune)
            self.refit(zb, "zb-h1")
            pool += zb.scored()
            builders[Option("zb-h1")] = zb.builder
        return step(cm, pool, fastest, alone, opts, builders)

    @gc_resumed
    def rerank(self, scorer: Scorer, best: Scored, alone: dict[str, Scored | None], top: int,
               to_plan: Callable[[Scored], Plan], cm: CostModel,
               reprice: Callable[[Scored], Scored]) -> list[Candidate]:
        """The ``top`` best distinct candidates (and each type's best alone), each under its
        fastest schedule (``reprice``), replayed in the simulator, best simulated first."""
        always = [best, *(r for r in alone.values() if r is not None)]
        pool = sorted((reprice(s) for s in shortlist([*scorer.scored(), *always], top, always)),
                      key=lambda s: (-s.tokens_per_s, s.num_replicas))  # analytic rank: as
        # each is priced under its fastest schedule

        def simulating(i: int, n: int) -> None:
            self.report((self.steps - 1 + i / n) / self.steps,
                        f"simulating candidate {i + 1} of {n}")

        return rerank(pool, to_plan, cm, simulating)
