"""The compute ceiling, cost and energy per million tokens, and `objective="cost"`."""

from __future__ import annotations

import pytest

from polychip.plan.serialize import plan_from_dict, plan_to_dict
from polychip.planner import plan_job
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

MODEL = load_model("tiny")
JOB = TrainingJob(global_batch=8, seq_len=256)


def _cluster(slow: dict | None = None, fast: dict | None = None):
    return cluster_from_dict({
        "name": "two-cpu",
        "nodes": [
            {"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10, **(slow or {})},
            {"chip": "cpu-fast", "count": 1, "chips_per_node": 1, "nic_gbps": 10, **(fast or {})},
        ],
        "network": {"kind": "ethernet", "latency_us": 50},
    })  # fmt: skip


def test_ceiling_is_chips_times_achievable_flops_over_flops_per_token() -> None:
    plan = plan_job(_cluster(), MODEL, JOB)
    assert plan.limit is not None and plan.estimate is not None
    # cpu-slow 0.05 and cpu-fast 0.2 TFLOP/s at efficiency 1.0 (catalog)
    flops = 2 * 0.05e12 + 1 * 0.2e12
    expected = flops / MODEL.training_flops_per_token(JOB.seq_len)
    assert plan.limit.tokens_per_s == pytest.approx(expected)
    assert plan.estimate.tokens_per_s < plan.limit.tokens_per_s  # no plan beats physics


def test_energy_and_cost_per_million_tokens_over_the_chips_used() -> None:
    plan = plan_job(_cluster(), MODEL, JOB)
    est = plan.estimate
    assert est is not None
    used = {"cpu-slow": 0, "cpu-fast": 0}
    for rep in plan.replicas:
        for st in rep.stages:
            used[st.chip] += st.tp
    seconds = 1e6 / est.tokens_per_s
    watts = used["cpu-slow"] * 100 + used["cpu-fast"] * 200  # catalog (fictional chips)
    dollars_h = used["cpu-slow"] * 0.5 + used["cpu-fast"] * 2.0  # cpu-fast: midpoint of 1.5-2.5
    assert est.energy_kwh_per_mtok == pytest.approx(watts * seconds / 3.6e6)
    assert est.cost_per_mtok == pytest.approx(dollars_h * seconds / 3600)


def test_unknown_power_gives_null_energy_and_json_keeps_the_interface_names() -> None:
    cluster = cluster_from_dict({
        "nodes": [{"chip": "cpu-mid", "count": 1, "chips_per_node": 1, "nic_gbps": 10}],
        "chips": {"cpu-mid": {"vendor": "c", "device_type": "cpu", "torch_backend": "gloo",
                              "peak_tflops_bf16": 0.1, "memory_gib": 8, "memory_gbps": 40,
                              "intra_node_gbps": 10}},
    })  # fmt: skip
    data = plan_to_dict(plan_job(cluster, MODEL, JOB))
    assert data["estimate"]["energy_kwh_per_mtok"] is None
    assert data["estimate"]["cost_per_mtok"] is None
    assert data["limit"]["tokens_per_s"] > data["estimate"]["tokens_per_s"]


def test_plan_json_round_trip_and_older_plans_without_the_fields() -> None:
    plan = plan_job(_cluster(), MODEL, JOB)
    data = plan_to_dict(plan)
    again = plan_from_dict(data)
    assert again.limit == plan.limit and again.estimate == plan.estimate
    del data["limit"]
    for key in ("cost_per_mtok", "energy_kwh_per_mtok"):
        del data["estimate"][key]
    old = plan_from_dict(data)
    assert old.limit is None and old.estimate is not None and old.estimate.cost_per_mtok is None


def test_cost_objective_leaves_out_an_overpriced_chip() -> None:
    cluster = _cluster(fast={"rent_usd_per_hour": 1000.0})
    fast = plan_job(cluster, MODEL, JOB)
    cheap = plan_job(cluster, MODEL, JOB, objective="cost")
    assert fast.estimate is not None and cheap.estimate is not None
    assert any(st.chip == "cpu-fast" for r in fast.replicas for st in r.stages)
    assert all(st.chip == "cpu-slow" for r in cheap.replicas for st in r.stages)
    assert cheap.estimate.cost_per_mtok < fast.estimate.cost_per_mtok
    assert any(n.startswith("objective cost:") for n in cheap.notes)


def test_cost_objective_without_a_rent_names_the_chip_and_the_key() -> None:
    cluster = cluster_from_dict({
        "nodes": [{"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10},
                  {"chip": "h800", "count": 1, "chips_per_node": 8, "nic_gbps": 400}],
    })  # fmt: skip
    with pytest.raises(PolychipError, match=r"'h800'.*rent_usd_per_hour.*nodes\[1\]"):
        plan_job(cluster, MODEL, JOB, objective="cost")
    with pytest.raises(PolychipError, match="objective 'money'"):
        plan_job(cluster, MODEL, JOB, objective="money")
