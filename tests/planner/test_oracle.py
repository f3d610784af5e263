"""The exhaustive oracle's limits: its size estimated before it searches, refusal over the
budget, the time limit (best so far, not proven), bounded memory."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest

from polychip.cli import main
from polychip.costmodel import CostModel
from polychip.planner import api as planner_api
from polychip.planner import plan_job
from polychip.planner.exhaustive import Exhaustive, compositions
from polychip.planner.oracle import FOLLOW_UP_FACTOR, count_templates, size_of
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.planner.space import all_templates
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec, load_model

# The case: 4 A100-80G on one node, 8 RTX 4090 on two nodes, Llama-2-7B.
BIG = {
    "name": "a100-4090",
    "nodes": [
        {"chip": "a100-80g", "count": 1, "chips_per_node": 4, "nic_gbps": 100},
        {"chip": "rtx4090", "count": 2, "chips_per_node": 4, "nic_gbps": 25},
    ],
    "network": {"kind": "roce", "latency_us": 10},
}


def _builder(seed: int, max_chips: int) -> tuple[ShapeBuilder, list[int]]:
    cluster, model, job = random_case(seed, max_chips)
    return ShapeBuilder(CostModel(cluster, model, job), "1f1b"), list(range(len(cluster.groups)))


@pytest.mark.parametrize("seed", range(6))
def test_template_count_is_exact(seed: int) -> None:
    builder, groups = _builder(seed, 16)
    cm = builder.cm
    for stages in (2, 4, cm.model.num_layers):
        stages = min(stages, cm.model.num_layers)
        templates = list(all_templates(cm.cluster, cm.model, builder.job, stages, groups))
        counted = count_templates(builder, stages, groups)
        assert sum(counted) == len(templates)
        for s, n in enumerate(counted):
            assert n == sum(1 for t in templates if sum(seg.num_stages for seg in t) == s)


@pytest.mark.parametrize("seed", [2, 7])
def test_estimate_vs_actual_work(seed: int) -> None:
    """The first pass is certain work, counted exactly; the whole search stays within the
    stated FOLLOW_UP_FACTOR of it (measured: at most 7.2, benchmarks/RESULTS.md)."""
    builder, groups = _builder(seed, 8)
    stages = builder.cm.model.num_layers
    size = size_of(builder, stages, groups)
    oracle = Exhaustive(Scorer(builder), stages)
    oracle.run(groups)
    assert oracle.proven
    assert size.first_pass_shapes <= oracle.shapes_built <= FOLLOW_UP_FACTOR * (
        size.first_pass_shapes
    )


def test_refuses_before_searching(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_search(*args, **kwargs):
        raise AssertionError("searched before refusing")

    monkeypatch.setattr(FastSearch, "run", no_search)
    monkeypatch.setattr(Exhaustive, "run", no_search)
    start = time.perf_counter()
    with pytest.raises(PolychipError) as info:
        plan_job(cluster_from_dict(BIG), load_model("llama2-7b"), TrainingJob(64, 2048),
                 exhaustive=True)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "--exhaustive refused" in message
    assert "952 kinds" in message and "layer splits to build" in message
    assert "--max-stages" in message and "fewer chips" in message
    assert "--time-limit of 10 min" in message


def test_cli_refusal_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(BIG))
    args = ["plan", str(path), "--model", "llama2-7b", "--global-batch", "64", "--seq-len",
            "2048", "--exhaustive", "--time-limit", "60"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "layer splits" in err and "--max-stages" in err and "1.0 min" not in err


def test_time_limit_only_with_exhaustive() -> None:
    assert main(["plan", "examples/clusters/cpu-test.yaml", "--model", "tiny",
                 "--time-limit", "5"]) == 2


def test_time_limit_returns_best_so_far_labelled(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """Past the deadline the oracle returns the best plan so far (at least the fast one),
    a valid plan whose notes say it is not proven optimal."""
    monkeypatch.setattr(planner_api, "check_budget", lambda *a: None)  # accept the space
    cluster, model, job = random_case(11, 8)  # the whole oracle takes far longer here
    start = time.perf_counter()
    plan = plan_job(cluster, model, job, exhaustive=True, time_limit_s=0.2)
    assert time.perf_counter() - start < 10.0
    assert plan.notes[0].startswith("NOT PROVEN OPTIMAL")
    fast = plan_job(cluster, model, job)
    assert plan.estimate.tokens_per_s >= fast.estimate.tokens_per_s * (1 - 1e-9)
    proven = plan_job(cluster, model, TrainingJob(4, 512), exhaustive=True, max_stages=1)
    assert not any("NOT PROVEN" in n for n in proven.notes)


def test_deadline_in_the_past_keeps_the_incumbent() -> None:
    builder, groups = _builder(2, 8)
    scorer = Scorer(builder)
    fast = FastSearch(scorer, 2).run(groups)
    oracle = Exhaustive(scorer, 2, deadline=time.monotonic() - 1)
    assert oracle.run(groups, incumbent=fast) is fast
    assert not oracle.proven


def test_cli_labels_a_stopped_search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(planner_api, "check_budget", lambda *a: None)
    monkeypatch.setattr(Exhaustive, "_tick", _always_late)
    out = tmp_path / "plan.json"
    assert main(["plan", "examples/clusters/cpu-test.yaml", "--model", "tiny", "--exhaustive",
                 "--time-limit", "30", "--global-batch", "8", "--seq-len", "128", "--out",
                 str(out)]) == 0
    assert "NOT PROVEN OPTIMAL" in capsys.readouterr().out
    assert any("NOT PROVEN OPTIMAL" in n for n in json.loads(out.read_text())["notes"])


def _always_late(self: Exhaustive) -> None:
    from polychip.planner.exhaustive import TimeUp

    raise TimeUp


def test_memory_stays_bounded() -> None:
    """~10,000 layer splits streamed: the peak stays far below what keeping them would
    take (bytes per shape measured here on 200 kept shapes)."""
    cluster = cluster_from_dict({**BIG, "nodes": [
        {"chip": "a100-80g", "count": 1, "chips_per_node": 2, "nic_gbps": 100},
        {"chip": "rtx4090", "count": 1, "chips_per_node": 2, "nic_gbps": 100},
    ]})
    model = ModelSpec("m16", 16, 1024, 8, 8, 2816, 32000)
    cm = CostModel(cluster, model, TrainingJob(4, 512))
    builder = ShapeBuilder(cm, "1f1b")
    tpl = next(t for t in all_templates(cluster, model, cm.job, 4) if len(t) == 2
               and sum(s.num_stages for s in t) == 4)
    tracemalloc.start()
    try:
        kept = [builder.build(tpl, 1, 1, 1, layers=c, keep=False)
                for c in list(compositions(16, 4))[:200]]
        per_shape = tracemalloc.get_traced_memory()[0] / len(kept)
        del kept
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        oracle = Exhaustive(Scorer(builder), 4)
        oracle.run([0, 1])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert oracle.shapes_built > 8_000
    assert peak < oracle.shapes_built * per_shape / 5
