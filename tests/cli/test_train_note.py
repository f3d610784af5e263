"""`polychip train` on real chips: a measured step far from an estimate whose compute figures
are the cost model's own says so in one line, with the commands that measure the chips."""

from __future__ import annotations

from dataclasses import replace

from polychip.cli.runreport import analytic_gap_note
from polychip.plan import Plan, Replica, Stage
from polychip.plan.plan import Estimate
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model


def _plan(_: str) -> Plan:
    cluster = cluster_from_dict({"name": "fast", "nodes": [
        {"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10}]})
    stages = (Stage(0, 2, 0, (0,), "cpu-fast"), Stage(2, 4, 0, (1,), "cpu-fast"))
    return Plan(cluster, load_model("tiny"), TrainingJob(8, 128), (Replica(stages, 8, 4),))


def test_far_from_an_analytic_estimate_says_why_and_how_to_measure() -> None:
    plan = _plan("pipeline")  # no stored estimate: the cost model's own figures
    note = analytic_gap_note(plan, 0.159, 0.018, "out/plan.json", "out/run.jsonl")
    assert note is not None and "\n" not in note
    assert "0.159 s) is 8.8x the estimate (0.018 s)" in note and "analytic" in note
    for command in ("polychip profile --model tiny --chip cpu-fast --precision bf16 "
                    "--seq-lens 128 --micro-batches 4 --out P.json",
                    "polychip estimate out/plan.json --profile P.json",
                    "polychip plan ... --profile P.json",
                    "polychip calibrate out/run.jsonl out/plan.json --profile P.json"):
        assert command in note
    assert analytic_gap_note(plan, 0.002, 0.018) is not None  # far the other way too


def test_close_or_profiled_estimates_say_nothing() -> None:
    plan = _plan("pipeline")
    assert analytic_gap_note(plan, 0.020, 0.018) is None
    profiled = replace(plan, estimate=Estimate(0.018, 1.0, 0.5, sources={"block": "measured"}))
    assert analytic_gap_note(profiled, 0.159, 0.018) is None
