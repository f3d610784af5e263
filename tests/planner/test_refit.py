"""`FastSearch.refit`: another search's candidates with every shape built again by this
search's builder (how `search_plans` tries ZB-H1's memory and closed form on the 1F1B
search's candidates)."""

from __future__ import annotations

from pathlib import Path

from polychip.costmodel import CostModel
from polychip.costmodel.pipeline_zb import ZeroBubbleForm
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def _searched() -> tuple[CostModel, FastSearch, object]:
    cm = CostModel(load_cluster(EXAMPLES / "h800-910b.yaml"), load_model("llama3-70b"),
                   TrainingJob(512, 4096))
    search = FastSearch(Scorer(ShapeBuilder(cm, "1f1b")), 16)
    return cm, search, search.run(list(range(len(cm.cluster.groups))))


def _layout(cand: tuple) -> list[tuple]:
    return sorted((s.template, s.micro_batch_size, s.zero_shards, n) for s, n in cand)


def test_refitting_with_the_same_builder_finds_the_same_plan() -> None:
    _, search, best = _searched()
    again = FastSearch(search.scorer, 16).refit(search.pool)
    assert best is not None and again is not None
    assert again.replicas == best.replicas and again.tokens_per_s == best.tokens_per_s


def test_zb_refit_keeps_each_candidate_and_fits_its_shapes_to_zb_memory() -> None:
    """Each refitted candidate is one of the pool's (the same templates, micro-batch sizes,
    ZeRO contexts and counts) whose shapes ZB-H1's memory holds, timed with its closed
    form; a candidate whose shapes cannot fit is dropped, not kept with 1F1B's."""
    cm, search, _ = _searched()
    zb = FastSearch(Scorer(ShapeBuilder(cm, "zb-h1")), 16)
    best = zb.refit(search.pool)
    assert best is not None and best.schedule == "zb-h1"
    layouts = {tuple(_layout(c)) for _, _, c, _ in search.pool}
    assert 0 < len(zb.pool) <= len(search.pool)
    for _, _, cand, _ in zb.pool:
        assert tuple(_layout(cand)) in layouts
        for shape, _ in cand:
            assert isinstance(shape.form, ZeroBubbleForm)
            assert zb.builder.build(shape.template, shape.micro_batch_size,
                                    shape.zero_shards) is shape
    dropped = [c for _, _, c, _ in search.pool if any(
        zb.builder.build(s.template, s.micro_batch_size, s.zero_shards) is None for s, _ in c)]
    assert dropped  # some 1F1B shapes do not fit ZB-H1's memory, however split
