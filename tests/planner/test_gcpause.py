"""The planner pauses Python's cyclic collector while it searches (planner/gcpause.py): safe
only because a search makes no reference cycles -- checked here on every kind of search --
and the collector is left as the caller had it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from polychip.planner import api, plan_job, run
from polychip.planner import search as search_module
from polychip.planner.gcpause import gc_paused
from polychip.planner.samples import random_case
from polychip.spec.cluster import cluster_from_dict, load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", ["fast", "exhaustive", "1f1b"])
@pytest.mark.parametrize("seed", [3, 11])
def test_a_search_leaves_no_cyclic_garbage(seed: int, kind: str) -> None:
    cluster, model, job = random_case(seed, max_chips=12)
    kwargs = {"fast": {}, "exhaustive": {"exhaustive": True, "max_stages": 2},
              "1f1b": {"schedule": "1f1b"}}[kind]
    with collector_off():
        plan_job(cluster, model, job, **kwargs)
        assert gc.collect() == 0  # nothing the paused collector would have freed


def test_an_example_search_leaves_no_cyclic_garbage() -> None:
    cluster = load_cluster(EXAMPLES / "h800-910b.yaml")
    with collector_off():
        plan = plan_job(cluster, load_model("llama3-70b"), TrainingJob(512, 4096))
        assert gc.collect() == 0
    assert plan.estimate is not None


def test_a_cost_search_leaves_no_cyclic_garbage() -> None:
    data = yaml.safe_load((EXAMPLES / "cpu-test.yaml").read_text())
    for i, node in enumerate(data["nodes"]):
        node["rent_usd_per_hour"] = 1.0 + i
    with collector_off():
        plan = plan_job(cluster_from_dict(data), load_model("tiny"), TrainingJob(16, 256),
                        objective="cost")
        assert gc.collect() == 0
    assert plan.estimate is not None and plan.estimate.cost_per_mtok is not None


def test_the_collector_is_off_while_searching_and_as_found_after(monkeypatch) -> None:
    seen: list[bool] = []
    run = search_module.FastSearch.run

    def recording(self, groups):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return run(self, groups)

    monkeypatch.setattr(search_module.FastSearch, "run", recording)
    cluster = load_cluster(EXAMPLES / "cpu-test.yaml")
    assert gc.isenabled()
    plan_job(cluster, load_model("tiny"), TrainingJob(16, 256))
    assert seen and not any(seen)
    assert gc.isenabled()
    with collector_off():
        plan_job(cluster, load_model("tiny"), TrainingJob(16, 256))
        assert not gc.isenabled()  # a caller that turned it off keeps it off


def test_the_collector_comes_back_when_the_search_raises() -> None:
    @gc_paused
    def failing() -> None:
        assert not gc.isenabled()
        raise ValueError("no plan")

    with pytest.raises(ValueError):
        failing()
    assert gc.isenabled()


def test_the_simulators_replays_run_with_the_collector_on(monkeypatch) -> None:
    seen: list[bool] = []
    real = run.rerank

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "rerank", recording)
    cluster = load_cluster(EXAMPLES / "cpu-test.yaml")
    found = api.search_plans(cluster, load_model("tiny"), TrainingJob(16, 256), simulate_top=2)
    assert seen == [True] and found.ranking
    assert gc.isenabled()
