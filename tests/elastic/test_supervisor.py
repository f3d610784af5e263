"""Elastic re-planning with real processes: a rank dies mid-run, the supervisor plans again on
the surviving chips, resumes from the newest checkpoint and finishes every step -- and the
model it ends with is exactly the single-process reference's (float64)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from tests.runtime.plans import cpu_test_plan, dp_plan
from tests.runtime.reference import CORPUS_BYTES, assert_saved_model_is_the_reference

from polychip.elastic.events import EVENTS
from polychip.elastic.supervisor import run_elastic
from polychip.plan import Plan, save_plan
from polychip.runtime.faults import FAULT_ENV
from polychip.runtime.metrics import read_metrics
from polychip.runtime.train_config import TrainConfig
from polychip.spec.cluster import cluster_to_dict
from polychip.spec.shrink import without_chips

SRC = Path(__file__).resolve().parents[2] / "src"
STEPS, EVERY, DIES_AFTER = 6, 2, 2  # saves at 2, 4, 6; rank 1 dies after step 2 (3 done)


def _survivors(old: Plan, survivors: Plan) -> Plan:
    """Every surviving chip, in data parallel (for so small a model the planner would rather
    use the fast chip alone: tests/elastic checks the supervisor, not that choice)."""
    nodes = [(g.index, g.chip.name) for g in survivors.cluster.groups]
    assert nodes == [(0, "cpu-slow"), (1, "cpu-fast"), (2, "cpu-mid")]
    return dp_plan(survivors.cluster, [(0, 0, "cpu-slow", 8, 4), (1, 0, "cpu-fast", 16, 4),
                                       (2, 0, "cpu-mid", 8, 4)], model=old.model,
                   seq_len=old.job.seq_len)


@pytest.mark.dist
def test_a_dead_rank_is_replanned_around_and_the_run_ends_exact(tmp_path: Path,
                                                                monkeypatch) -> None:
    plan = cpu_test_plan(shares=(4, 4, 16, 8))
    config = TrainConfig(steps=STEPS, emulate=True, dilation=3.0, dtype="float64", lr=0.05,
                         max_corpus_bytes=CORPUS_BYTES, checkpoint_dir=str(tmp_path / "ckpt"),
                         save_every=EVERY, metrics_path=str(tmp_path / "metrics.jsonl"))
    monkeypatch.setenv(FAULT_ENV, f"1:{DIES_AFTER}")
    said: list[str] = []
    done = run_elastic(plan, config, max_restarts=1, say=said.append, replanner=_survivors)

    assert FAULT_ENV not in os.environ  # the injected death happens once
    (event,) = done.replans
    assert (event.died_rank, event.died_chip, event.old_world, event.new_world) == (
        1, "cpu-slow", 4, 3)
    assert event.resumed_step == EVERY  # steps 2 (the one after the save) recomputed only
    assert event.old_tokens_per_s and event.new_tokens_per_s
    assert len(said) == 1 and "tokens/s" in said[0]
    assert "re-planned on the 3 chips" in said[0] and "plan uses 3" in said[0]
    logged = [json.loads(x) for x in (tmp_path / "ckpt" / EVENTS).read_text().splitlines()]
    assert [e["died_rank"] for e in logged] == [1]
    assert done.plan.world_size == 3 and done.summary is not None
    assert done.summary.steps == STEPS - EVERY

    # every step once per rank of the plan that ran it; the metrics continue across plans
    records = read_metrics(tmp_path / "metrics.jsonl")
    by_step = {s: sorted(r["rank"] for r in records if r["step"] == s) for s in range(STEPS)}
    assert all(by_step[s] == [0, 1, 2, 3] for s in range(EVERY))
    assert all(by_step[s] == [0, 1, 2] for s in range(EVERY, STEPS))

    # the model at the end is the single-process reference's, whatever happened on the way
    assert_saved_model_is_the_reference(tmp_path / "ckpt", plan, config, STEPS)


@pytest.mark.dist
def test_train_elastic_from_the_command_line(tmp_path: Path) -> None:
    """`polychip train --elastic` as a user runs it: the planner chooses the new plan, the
    run finishes, and the console says what happened; without a checkpoint dir: exit 2."""
    plan_path, text = tmp_path / "plan.json", tmp_path / "text.txt"
    save_plan(cpu_test_plan(shares=(4, 4, 16, 8)), plan_path)
    text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    base = [sys.executable, "-m", "polychip", "train", str(plan_path), "--steps", "4",
            "--emulate", "--dilation", "3", "--data", str(text), "--elastic"]
    env = {**os.environ, "PYTHONPATH": str(SRC), FAULT_ENV: "2:1"}
    refused = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "--checkpoint-dir" in refused.stderr + refused.stdout
    done = subprocess.run([*base, "--checkpoint-dir", str(tmp_path / "ckpt"), "--save-every",
                           "1"], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    out = " ".join(done.stdout.split())
    assert "rank 2 (cpu-fast, node 1) died" in out and "resuming from step 1" in out
    assert "elastic: finished on" in out and "after 1 re-plan(s)" in out


def _four_chips(old: Plan, grown: Plan) -> Plan:
    nodes = [(g.index, g.chip.name, g.chips_per_node) for g in grown.cluster.groups]
    assert nodes == [(0, "cpu-slow", 2), (1, "cpu-fast", 1), (2, "cpu-mid", 1)]
    return cpu_test_plan(shares=(4, 4, 16, 8))


@pytest.mark.dist
def test_chips_that_join_are_taken_in_after_a_save(tmp_path: Path) -> None:
    """The cluster file grows from 3 to 4 chips mid-run: the ranks stop after their step and
    save, the job is re-planned on 4 chips, resumes with nothing recomputed, and ends equal
    to the single-process reference (float64)."""
    full = cpu_test_plan(shares=(4, 4, 16, 8))
    small_cluster, _ = without_chips(full.cluster, {0: 1})
    small = _survivors(full, dataclasses.replace(full, cluster=small_cluster))
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(cluster_to_dict(small_cluster)))
    metrics = tmp_path / "metrics.jsonl"
    config = TrainConfig(steps=16, emulate=True, dilation=3.0, dtype="float64", lr=0.05,
                         max_corpus_bytes=CORPUS_BYTES, checkpoint_dir=str(tmp_path / "ckpt"),
                         save_every=100, metrics_path=str(metrics))

    def grow() -> None:  # once the run has taken 2 steps, a node's second chip comes back
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                len(p.read_text().splitlines()) >= 2 for p in tmp_path.glob("metrics.jsonl.rank*")):
            time.sleep(0.05)
        time.sleep(0.05)
        cluster_file.write_text(yaml.safe_dump(cluster_to_dict(full.cluster)))
    said: list[str] = []
    threading.Thread(target=grow, daemon=True).start()
    done = run_elastic(small, config, say=said.append, replanner=_four_chips,
                       cluster_file=cluster_file, poll_s=0.05)

    (event,) = done.replans
    assert event.died_rank is None and "+1 chips" in event.reason
    assert (event.old_world, event.chips, event.new_world) == (3, 4, 4)
    assert 2 <= event.resumed_step < 16  # saved when stopped: nothing recomputed
    assert any("now has 4 chips" in line for line in said)
    records = read_metrics(metrics)
    steps = sorted({r["step"] for r in records})
    assert steps == list(range(16))
    assert {r["rank"] for r in records if r["step"] == 15} == {0, 1, 2, 3}
    # 16 AdamW steps whose float64 sums ran in other orders: 1e-11, not the 1e-12 of 6
    assert_saved_model_is_the_reference(tmp_path / "ckpt", full, config, 16, atol=1e-11)

