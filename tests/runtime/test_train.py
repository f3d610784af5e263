"""The training loop from a plan: exactness, a dying rank, the train command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from polychip.cli import main
from polychip.plan import Plan, save_plan
from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.metrics import rank_log_path, read_metrics
from polychip.runtime.model import build_full_model, loss_fn
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks, run_with_a_dying_rank, train_command
from .plans import ROOT, cluster, cpu_test_plan, dp_plan
from .reference import CORPUS_BYTES, single_process

ATOL = 1e-12
PHASES = ("compute_s", "pipeline_wait_s", "grad_sync_s", "optimizer_s", "idle_s")


def _islands_plan() -> Plan:
    """12 samples on a fast chip (3 micro-batches of 4), 3 + 1 on two slow chips of another
    vendor: two islands, uneven shares and micro-batch counts."""
    c = cluster([{"chip": "cpu-fast", "count": 1, "chips_per_node": 1, "nic_gbps": 10},
                 {"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10}])
    return dp_plan(c, [(0, 0, "cpu-fast", 12, 4), (1, 0, "cpu-slow", 3, 1),
                       (1, 1, "cpu-slow", 1, 1)])


def _exact_worker(rank: int, world_size: int, plan: Plan) -> None:
    for optimizer in ("sgd", "adamw"):
        config = TrainConfig(steps=3, emulate=True, dilation=1.0, dtype="float64",
                             optimizer=optimizer, lr=0.05, max_corpus_bytes=CORPUS_BYTES)
        topology = build_topology(plan, rank, emulate=True, timeout=config.timeout)
        assert topology.islands == ((0,), (1, 2))
        trainer = Trainer(plan, config, topology)
        # The emulated clocks' code path, with slots of microseconds: every phase overruns,
        # and the governor raises the dilation after 3 steps, on every rank alike.
        trainer.use_dilation(1.0, adaptive=True)
        records = trainer.run(config.steps)
        trainer.sync.check_views()
        dilations: list[float | None] = [None] * world_size
        dist.all_gather_object(dilations, trainer.dilation)
        assert dilations == [1.3] * world_size

        ref_losses, ref_params = single_process(plan, config)
        for record, expected in zip(records, ref_losses, strict=True):
            assert record.global_loss == pytest.approx(expected, abs=ATOL)
        for name, p in trainer.model.named_parameters():
            torch.testing.assert_close(p, ref_params[name], rtol=0, atol=ATOL,
                                       msg=f"rank {rank} {name} ({optimizer})")


@pytest.mark.dist
def test_uneven_shares_and_islands_train_exactly_like_one_process(tmp_path: Path) -> None:
    run_ranks(_exact_worker, 3, tmp_path, _islands_plan())


@pytest.mark.dist
def test_a_rank_that_dies_mid_step_stops_the_others_with_a_clear_error(tmp_path: Path) -> None:
    metrics = tmp_path / "m.jsonl"
    config = TrainConfig(steps=6, emulate=True, dilation=1.0, dtype="float64",
                         max_corpus_bytes=CORPUS_BYTES, timeout_s=60, metrics_path=str(metrics))
    # 3 micro-batches per step on rank 1: its forward call 3 (0-based) is step 1's first
    outcomes = run_with_a_dying_rank(_islands_plan(), config, tmp_path, world_size=3,
                                     dying_rank=1, die_at_call=3)
    for rank, (elapsed, message) in outcomes.items():
        assert elapsed < 30
        assert f"rank {rank} " in message and "step 1" in message
        assert "another rank died" in message
    # every rank, the dead one included, left the step it finished on disk
    for rank in range(3):
        kept = read_metrics(rank_log_path(metrics, rank))
        assert [(r["step"], r["rank"]) for r in kept] == [(0, rank)]
    assert not metrics.exists()  # no merged file: the run never ended


def test_grads_live_in_one_buffer_and_accumulate_in_place() -> None:
    model = build_full_model(cpu_test_plan().model, dtype=torch.float64)
    grads = StageGrads(model, ["head", "0:2", "emb"], [["head", "0:2", "emb"]], {},
                       has_loss=True, tp_size=1)
    assert [e.segment for e in grads.entries[:3]] == ["head", "head", "head"]
    assert grads.entries[2].name == "<loss>" and grads.entries[-1].name == "embed.weight"
    x = torch.randint(0, 256, (2, 8))
    for _ in range(2):
        loss = loss_fn(model(x), x)
        loss.backward()
        grads.add_loss_(loss)
    grads.check_views()
    once = build_full_model(cpu_test_plan().model, dtype=torch.float64)
    loss_fn(once(x), x).backward()
    assert grads.loss == pytest.approx(2 * loss.item())
    for p, q in zip(model.parameters(), once.parameters(), strict=True):
        torch.testing.assert_close(p.grad, 2 * q.grad, rtol=1e-12, atol=1e-15)


# ---- the command ------------------------------------------------------------------------
@pytest.mark.dist
def test_train_command_end_to_end_with_metrics(tmp_path: Path) -> None:
    out, records = train_command(cpu_test_plan((2, 2, 8, 4), micro_batch=2), tmp_path)
    assert "EMULATED" in out and "4 ranks, 3 island(s)" in out
    assert [(r["step"], r["rank"]) for r in records] == [(s, r) for s in (0, 1)
                                                         for r in range(4)]
    assert sorted(p.name for p in tmp_path.glob("metrics.jsonl*")) == ["metrics.jsonl"]
    fast = records[2]
    assert (fast["chip"], fast["replica"], fast["samples"], fast["tokens"]) == (
        "cpu-fast", 2, 8, 64)
    assert fast["emulated"] is True and fast["dilation"] == 3 and fast["version"] == 3
    for r in records:
        phases = [r[k] for k in PHASES]
        assert all(v >= 0 for v in phases) and r["compute_s"] > 0 and r["grad_sync_s"] > 0
        assert sum(phases) == pytest.approx(r["seconds"], rel=1e-9)
        chip = r["emulated_time"]
        assert sum(chip[k] for k in PHASES) == pytest.approx(chip["seconds"], rel=1e-9)
        assert r["padding_s"] > 0 and r["memory_kind"] == "cpu-tensors"
        counted = r["memory"]
        assert counted["parameters_bytes"] > 0 and counted["activations_bytes"] > 0
        # slots and waits count 1/dilation; host work outside the slots counts in full
        # (between chained slots it is inside the next slot)
        assert r["compute_s"] / 3 <= chip["compute_s"] + 1e-9
        assert chip["compute_s"] <= (r["compute_s"] + r["idle_s"]) / 3 + 1e-9
        assert chip["grad_sync_s"] == pytest.approx(r["grad_sync_s"] / 3)
        assert chip["idle_s"] <= r["idle_s"] + 1e-9 and chip["seconds"] < r["seconds"]


def test_train_command_rejects_bad_data_and_missing_devices(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from .test_topology import _npu_plan

    plan_path = tmp_path / "plan.json"
    save_plan(cpu_test_plan(), plan_path)
    assert main(["train", str(plan_path), "--data", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt does not exist" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert main(["train", str(plan_path), "--data", str(tmp_path / "empty.txt")]) == 2
    assert "is empty" in capsys.readouterr().err
    save_plan(_npu_plan(), plan_path)
    assert main(["train", str(plan_path)]) == 2
    err = capsys.readouterr().err
    assert "npu" in err and "--emulate" in err


_DYING_UNDER_LAUNCHER = """
import os, sys, time
from dataclasses import dataclass
from datetime import timedelta
from polychip.plan import load_plan
from polychip.runtime.errors import DistributedRunError
from polychip.runtime.launch import launch_local
from polychip.runtime.session import train
from polychip.runtime.train import TrainConfig, Trainer

@dataclass(frozen=True)
class DyingRank:
    config: TrainConfig
    emulate: bool = True
    timeout: timedelta = timedelta(seconds=60)

    def __call__(self, plan, rank):
        if rank == 1:
            step = Trainer.step
            def dying(trainer, index):
                if index == 1:
                    os._exit(7)
                return step(trainer, index)
            Trainer.step = dying
        return train(plan, rank, self.config)

config = TrainConfig(steps=4, emulate=True, dilation=2, data=sys.argv[2])
begin = time.monotonic()
try:
    launch_local(load_plan(sys.argv[1]), DyingRank(config))
except DistributedRunError as exc:
    print(f"{time.monotonic() - begin:.1f}", exc)
"""


@pytest.mark.dist
def test_launcher_stops_the_job_when_a_rank_dies(tmp_path: Path) -> None:
    plan_path, text = tmp_path / "plan.json", tmp_path / "text.txt"
    save_plan(cpu_test_plan((2, 2, 8, 4), micro_batch=2), plan_path)
    text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", _DYING_UNDER_LAUNCHER, str(plan_path),
                           str(text)], capture_output=True, text=True, env=env, timeout=120)
    elapsed, message = done.stdout.strip().split(" ", 1)
    assert "rank 1 (cpu-slow) died with exit code 7" in message, done.stderr
    assert float(elapsed) < 20  # the agent stops the others at once, no process-group timeout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_launch_exec_runs_torchrun_per_node_with_plan_ranks(tmp_path: Path) -> None:
    """Two `torchrun` agents on this host play two nodes; node 0's local ranks 0 and 1 are
    plan ranks 2 and 0 (device order differs from replica order)."""
    from .test_topology import _two_node_plan

    plan_path, metrics, text = (tmp_path / "plan.json", tmp_path / "m.jsonl",
                                tmp_path / "text.txt")
    save_plan(_two_node_plan(), plan_path)
    text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "polychip", "launch", str(plan_path), "--nodes",
         "localhost,localhost", "--port", str(_free_port()), "--exec", "--steps", "1",
         "--emulate", "--dilation", "2", "--data", str(text), "--metrics", str(metrics)],
        capture_output=True, text=True, env=env, timeout=150, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["rank"], r["replica"], r["chip"], r["samples"]) for r in records] == [
        (0, 0, "cpu-slow", 2), (1, 1, "cpu-fast", 8), (2, 2, "cpu-slow", 2)]
