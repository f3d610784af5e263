"""Plan <-> JSON: the round trip is exact; a file that is not a plan says so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from polychip.plan import (
    SCHEMA_VERSION,
    Plan,
    PlanError,
    load_plan,
    plan_from_dict,
    plan_to_dict,
    save_plan,
)

from .handbuilt_plan import make_plan


@pytest.fixture
def plan() -> Plan:
    return make_plan()


def test_hand_built_plan_round_trips(plan: Plan, tmp_path: Path) -> None:
    assert plan_from_dict(plan_to_dict(plan)) == plan
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    again = load_plan(path)
    assert again == plan
    assert again.cluster.groups[1].chip.compute_efficiency == 0.4  # inline override kept
    assert plan_to_dict(again) == plan_to_dict(plan)


def test_plan_without_estimate_round_trips(plan: Plan) -> None:
    bare = dataclasses.replace(plan, estimate=None, baselines={}, ideal=None, notes=())
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(bare)))) == bare


def test_json_has_the_issue_fields(plan: Plan, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["kind"] == "polychip-plan"
    assert data["estimate"]["step_time_s"] == 0.123
    assert data["estimate"]["mfu"] == 0.31
    assert data["estimate"]["tokens_per_s"] == pytest.approx(12 * 128 / 0.123)
    assert data["estimate"]["schedule"] == plan.schedule  # issue 12: the schedule it priced
    assert data["baselines"]["best_single_type"]["tokens_per_s"] == 9000.0
    assert data["baselines"]["naive_mixed"]["tokens_per_s"] == 7000.0
    assert data["ideal"]["tokens_per_s"] == 15000.0
    stage = data["replicas"][0]["stages"][0]
    assert stage == {
        "layers": [0, 3],
        "node": 0,
        "local_devices": [0, 1],
        "chip": "h800",
        "tp": 2,
        "recompute": False,
    }
    assert data["replicas"][0]["num_micro_batches"] == 4
    # The cluster is embedded fully resolved: a runtime needs no catalog lookup.
    assert data["cluster"]["chips"]["ascend-910b"]["memory_gib"] == 64


def test_ranks_are_numbered_replica_stage_tp(plan: Plan) -> None:
    ranks = plan.ranks()
    assert plan.world_size == len(ranks) == 5
    assert [(r.replica, r.stage, r.tp_rank) for r in ranks] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0)
    ]  # fmt: skip
    assert [(r.node, r.local_device) for r in ranks] == [(0, 0), (0, 1), (1, 4), (1, 5), (1, 0)]
    assert plan.stage_ranks(0, 1) == (2, 3)
    assert plan.chip("h800").name == "h800"


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "plan.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        ("{not json", "not a JSON plan file"),
        (b"\xff\xfe\x00\x81", "not a JSON plan file"),
        ("[1, 2, 3]", "not a polychip plan"),
        ('{"nodes": []}', "not a polychip plan"),
        ("nodes:\n  - {chip: h800}\n", "not a JSON plan file"),  # a cluster YAML
    ],
)
def test_load_plan_of_something_else(tmp_path: Path, content: str | bytes, rule: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(PlanError, match=rule) as info:
        load_plan(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_plan_missing(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "absent.json")


def test_other_schema_version_says_regenerate(plan: Plan, tmp_path: Path) -> None:
    data = plan_to_dict(plan) | {"schema_version": 2}
    path = _write(tmp_path, json.dumps(data))
    with pytest.raises(PlanError) as info:
        load_plan(path)
    msg = str(info.value)
    assert "schema_version 2" in msg and "reads 1" in msg and "polychip plan" in msg


def _broken(plan: Plan, edit) -> dict:
    data = json.loads(json.dumps(plan_to_dict(plan)))
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "field", "rule"),
    [
        (lambda d: d.update(kind="polychip-cluster"), "kind", "polychip-plan"),
        (lambda d: d.update(extra=1), "extra", "not permitted"),
        (lambda d: d["replicas"][1].update(batch_size=0), "replicas[1].batch_size",
         "or equal to 1"),
        (lambda d: d["replicas"][0]["stages"][0].pop("layers"), "replicas[0].stages[0].layers",
         "required"),
        (lambda d: d["replicas"][0]["stages"][1].update(tp=3), "replicas[0].stages[1].tp",
         "2 local_devices"),
        (lambda d: d["replicas"][0].update(num_micro_batches=3), "replicas[0]",
         "num_micro_batches 3"),
        (lambda d: d["model"].update(num_layers=0), "model.num_layers", "or equal to 1"),
        (lambda d: d["job"].update(precision="fp8"), "job.precision", "bf16"),
        (lambda d: d["model"].update(num_params=5), "model.num_params", "remove num_params"),
        (lambda d: d["model"].update(family="bert"), "model.family", "gpt_neox"),
        (lambda d: d["model"].update(activation="relu"), "model", "does not fit a swiglu"),
        (lambda d: d["model"].update(position="learned", max_positions=64, num_params=None),
         "job.seq_len",
         "exceeds the 64 learned positions"),
        (lambda d: d.update(schedule="zigzag"), "schedule", "1f1b"),
        (lambda d: d["cluster"]["nodes"][1].update(count=0), "cluster.nodes[1].count",
         "greater than 0"),
        (lambda d: d["cluster"].pop("nodes"), "cluster.nodes", "required"),
        (lambda d: d["estimate"].update(colour=1), "estimate", "colour"),
        # then the meaning, by validate_plan:
        (lambda d: d["replicas"][0]["stages"][1].update(layers=[2, 4]),
         "replicas[0].stages[1].layers", "exactly one stage"),
        (lambda d: d["replicas"][1].update(batch_size=8, micro_batch_size=8),
         "replicas", "sum to 16"),
    ],
)  # fmt: skip
def test_plan_file_errors_name_the_field(
    plan: Plan, tmp_path: Path, edit, field: str, rule: str
) -> None:
    path = _write(tmp_path, json.dumps(_broken(plan, edit)))
    with pytest.raises(PlanError) as info:
        load_plan(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field}"), msg
    assert msg.count(str(path)) == 1, msg  # the file is named once
    assert rule in msg, msg


def test_model_carries_its_count_and_family(plan: Plan) -> None:
    model = plan_to_dict(plan)["model"]
    assert model["family"] == "llama"
    assert model["num_params"] == plan.model.num_params == 217_664


def test_a_gpt2_plan_round_trips(plan: Plan) -> None:
    from polychip.spec.model import load_model

    gpt2 = dataclasses.replace(load_model("gpt2"), num_heads=4, num_kv_heads=2 * 2)
    gpt2 = dataclasses.replace(gpt2, num_layers=plan.model.num_layers)
    mine = dataclasses.replace(plan, model=gpt2)
    data = json.loads(json.dumps(plan_to_dict(mine)))
    assert data["model"]["family"] == "gpt2" and data["model"]["num_params"] == gpt2.num_params
    assert plan_from_dict(data) == mine


def test_an_old_plan_file_reads_as_llama(plan: Plan) -> None:
    """Written before the model gained its family, norm, positions, biases and count."""
    data = json.loads(json.dumps(plan_to_dict(plan)))
    old = ("name", "num_layers", "hidden_size", "num_heads", "num_kv_heads",
           "ffn_hidden_size", "vocab_size", "mlp", "tie_embeddings")  # fmt: skip
    data["model"] = {k: data["model"][k] for k in old}
    data["cluster"].pop("links")
    again = plan_from_dict(data)
    assert again == plan
    assert (again.model.family, again.model.norm, again.model.position) == (
        "llama", "rmsnorm", "rope")


def test_an_estimate_written_before_phases_and_sources_still_loads(plan: Plan) -> None:
    data = plan_to_dict(plan)
    for key in ("phases_s", "sources"):
        del data["estimate"][key]
    est = plan_from_dict(json.loads(json.dumps(data))).estimate
    assert est is not None and est.phases_s == {} and est.sources == {}
    assert est.step_time_s == 0.123
