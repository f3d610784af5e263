"""`polychip estimate` and `--profile` on plan / simulate / estimate: the JSON interface's
names, the fits verdict, measured vs analytic labels, a stale stored estimate said once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.spec.profile_data import tiny_profile, write

from polychip.cli import main
from polychip.plan import Plan, Replica, Stage, load_plan, plan_to_dict, save_plan
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[2]
CPU = str(ROOT / "examples" / "clusters" / "cpu-test.yaml")
FIELDS = {"step_time_s", "tokens_per_s", "fits", "limit", "phases", "devices", "sources"}
PHASES = {"compute_s", "pipeline_wait_s", "grad_sync_s", "optimizer_s", "idle_s"}


def _pipeline(model: str = "tiny", seq: int = 128) -> Plan:
    """cpu-slow (node 0, two chips) runs the first half of the layers, cpu-fast (node 1) the
    second half."""
    spec = load_model(model)
    half = spec.num_layers // 2
    stages = (Stage(0, half, 0, (0,), "cpu-slow"), Stage(half, 2 * half, 1, (0,), "cpu-fast"))
    job = TrainingJob(global_batch=4, seq_len=seq)
    return Plan(load_cluster(CPU), spec, job, (Replica(stages, 4, 1),))


def _estimate(tmp_path: Path, plan: Plan, *flags: str) -> dict:
    path, out = tmp_path / "plan.json", tmp_path / "est.json"
    save_plan(plan, path)
    assert main(["estimate", str(path), "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_estimate_json_has_the_interface_names(tmp_path: Path, capsys) -> None:
    got = _estimate(tmp_path, _pipeline(), "--simulate")
    assert set(got) == FIELDS | {"simulated"} and set(got["simulated"]) == FIELDS - {"sources"}
    for figures in (got, got["simulated"]):
        assert set(figures["phases"]) == PHASES
        assert sum(figures["phases"].values()) == pytest.approx(figures["step_time_s"])
        assert figures["fits"] is True and figures["limit"] is None
        assert [(d["rank"], d["chip"]) for d in figures["devices"]] == [
            (0, "cpu-slow"), (1, "cpu-fast")]
        for d in figures["devices"]:
            assert 0 < d["peak_memory_bytes"] < d["capacity_bytes"]
    assert got["tokens_per_s"] == pytest.approx(4 * 128 / got["step_time_s"])
    assert set(got["sources"].values()) == {"analytic"}
    out = capsys.readouterr().out
    assert "one training step" in out and "simulated" in out and "fits memory" in out


def test_a_plan_that_does_not_fit_names_its_limit(tmp_path: Path, capsys) -> None:
    got = _estimate(tmp_path, _pipeline("llama2-7b", 256))  # 7B on 4 + 8 GiB chips
    assert got["fits"] is False
    assert got["limit"].startswith("memory: replica 0 stage 0 on cpu-slow needs ")
    assert "replica 0 stage 1 on cpu-fast needs" in got["limit"]
    over = [d for d in got["devices"] if d["peak_memory_bytes"] > d["capacity_bytes"]]
    assert len(over) == 2
    assert "does not fit (analytic)" in capsys.readouterr().out


def test_a_profile_changes_the_figures_and_their_labels(tmp_path: Path, capsys) -> None:
    plain = _estimate(tmp_path, _pipeline())
    profile = write(tmp_path, tiny_profile(chip="cpu-fast"), "fast.json")
    got = _estimate(tmp_path, _pipeline(), "--profile", str(profile))
    assert got["sources"]["block"] == "mixed"  # cpu-fast measured, cpu-slow analytic
    assert got["sources"]["head"] == "measured" and got["sources"]["embedding"] == "analytic"
    assert got["step_time_s"] > plain["step_time_s"]  # 2 x 30 ms of measured blocks
    assert got["phases"]["compute_s"] == pytest.approx(4 * (2 * 0.030 + 0.003 + 0.006))
    assert "stored estimate" not in capsys.readouterr().out  # the plan had none


def test_stored_estimates_are_recomputed_and_a_stale_one_is_said(tmp_path: Path, capsys) -> None:
    plan_path = tmp_path / "plan.json"
    assert main(["plan", CPU, "--model", "tiny", "--global-batch", "8", "--seq-len", "128",
                 "--schedule", "1f1b", "--out", str(plan_path)]) == 0  # data parallel
    assert main(["estimate", str(plan_path)]) == 0
    assert "stored estimate" not in capsys.readouterr().out  # fresh from the planner
    data = plan_to_dict(load_plan(plan_path))
    shares = [r["batch_size"] for r in data["replicas"]]
    data["replicas"][0]["batch_size"] = shares[0] + shares[1]  # a hand edit of the shares
    data["replicas"][0]["micro_batch_size"] = 1
    data["replicas"][0]["num_micro_batches"] = shares[0] + shares[1]
    del data["replicas"][1]
    plan_path.write_text(json.dumps(data))
    stored = load_plan(plan_path).estimate
    for command in ("estimate", "simulate"):
        assert main([command, str(plan_path)]) == 0
        out = capsys.readouterr().out
        assert out.count("the plan file's stored estimate") == 1, out
        assert f"step {stored.step_time_s:.4g} s" in out
        assert "analytic (plan file)" not in out


def test_plan_with_a_profile_labels_its_estimate(tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan.json"
    profile = write(tmp_path, tiny_profile(chip="cpu-fast"), "fast.json")
    assert main(["plan", CPU, "--model", "tiny", "--global-batch", "8", "--seq-len", "128",
                 "--profile", str(profile), "--out", str(out)]) == 0
    est = load_plan(out).estimate
    assert est is not None and est.sources.get("optimizer") in ("measured", "mixed")
    assert "figures:" in capsys.readouterr().out


@pytest.mark.parametrize(("edit", "says"), [
    (lambda d: d.update(precision="fp16"), "precision: 'fp16' but the job runs precision"),
    (lambda d: d["model"].update(vocab_size=512), "model.vocab_size: 512 but"),
    (lambda d: d["blocks"][0].update(fwd_s=-1), "blocks[0].fwd_s: -1"),
    (lambda d: d.update(chip="h100"), "chip: 'h100' is no chip type of cluster"),
])
def test_a_bad_profile_exits_2_naming_file_and_key(tmp_path: Path, capsys, edit, says) -> None:
    data = tiny_profile()
    edit(data)
    profile = write(tmp_path, data, "bad.json")
    path = tmp_path / "plan.json"
    save_plan(_pipeline(), path)
    assert main(["estimate", str(path), "--profile", str(profile)]) == 2
    err = capsys.readouterr().err
    assert str(profile) in err and says in err and err.count("\n") == 1, err


def test_the_documented_hand_written_plan_estimates(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "plan-format.md").read_text()
    section = text.split("## Writing a plan by hand", 1)[1]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    path, out = tmp_path / "plan.json", tmp_path / "est.json"
    path.write_text(example)
    plan = load_plan(path)
    assert [s.num_layers for s in plan.replicas[0].stages] == [0, 4, 0]
    assert main(["estimate", str(path), "--simulate", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["fits"] and [d["chip"] for d in got["devices"]] == ["cpu-slow"] * 2 + ["cpu-fast"]
    assert got["simulated"]["step_time_s"] > 0


def test_simulate_writes_the_same_json(tmp_path: Path) -> None:
    path, out = tmp_path / "plan.json", tmp_path / "sim.json"
    save_plan(_pipeline(), path)
    assert main(["simulate", str(path), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert set(got) == FIELDS | {"simulated"}
    assert got == _estimate(tmp_path, _pipeline(), "--simulate")
