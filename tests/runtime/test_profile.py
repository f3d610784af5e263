"""`polychip profile`: the runtime's own blocks timed on this CPU into a valid profile the
cost model reads back exactly; TP shard shapes without collectives; the bytes saved for a
backward; a missing device type named with its package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polychip.cli import main
from polychip.costmodel import CostModel, ProfileSet
from polychip.costmodel.memory import block_activations, end_activations
from polychip.runtime.layers import DecoderLayer, rotary_cos_sin
from polychip.runtime.profile import NoCollectives
from polychip.runtime.profile_timing import saved_bytes
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model
from polychip.spec.profile_file import load_profile

ROOT = Path(__file__).resolve().parents[2]
TINY = load_model("tiny")


@pytest.mark.dist
def test_quick_profile_of_this_cpu_is_valid_and_read_back_exactly(tmp_path: Path) -> None:
    out = tmp_path / "cpu-fast.json"
    assert main(["profile", "--model", "tiny", "--device", "cpu", "--chip", "cpu-fast",
                 "--quick", "--out", str(out)]) == 0
    p = load_profile(out)
    assert (p.chip, p.precision, p.provenance.device_type) == ("cpu-fast", "fp32", "cpu")
    assert [(b.tp, b.micro_batch, b.seq_len) for b in p.blocks] == [
        (1, 1, 64), (1, 2, 64), (2, 1, 64), (2, 2, 64)]
    assert len(p.embedding) == len(p.head) == 4 and p.optimizer_s_per_param > 0
    one, two = p.blocks[0], p.blocks[1]
    # twice the tokens keep about twice the bytes (cos/sin tables are shared, not doubled)
    assert 1.9 < two.activation_bytes / one.activation_bytes <= 2.0
    assert p.blocks[2].activation_bytes < one.activation_bytes  # a TP shard keeps less
    assert {(c.op, c.group_size) for c in p.collectives} == {
        ("all_reduce", 2), ("all_gather", 2), ("reduce_scatter", 2)}
    assert len(p.p2p) == 2 and len(p.d2h) == len(p.h2d) == 2
    job = TrainingJob(global_batch=4, seq_len=64, precision="fp32")
    # the bytes kept are the cost model's own count of what the runtime's parts save
    for point, want in ((one, block_activations(TINY, job, 1, 1).saved_bytes),
                        (p.embedding[0], end_activations(TINY, job, 1, 1).first)):
        assert point.activation_bytes == want
    assert p.head[0].activation_bytes == pytest.approx(end_activations(TINY, job, 1, 1).last,
                                                       abs=16)  # + a loss scalar or two
    # the runtime's host work, per micro-batch and per step; the process's own memory
    assert [(h.micro_batch, h.seq_len) for h in p.host] == [(1, 64), (2, 64)]
    assert p.host_step_s is not None and all(h.seconds >= 0 for h in p.host)
    assert p.fixed_memory_bytes is not None and p.fixed_memory_bytes > 50 * 2**20
    cluster = load_cluster(ROOT / "examples" / "clusters" / "cpu-test.yaml")
    cm = CostModel(cluster, TINY, job, ProfileSet.for_job([p], cluster, TINY, job))
    t = cm.stage_times(cm.chip("cpu-fast"), 3, 1, 2, False, False, False)
    assert (t.fwd_s, t.bwd_s) == pytest.approx((3 * two.fwd_s, 3 * two.bwd_s))


def test_a_tp_shard_runs_alone_with_its_share_of_the_heads() -> None:
    config = TINY
    torch.manual_seed(0)
    full, shard = DecoderLayer(config, NoCollectives()), DecoderLayer(config, NoCollectives(2))
    for layer in (full, shard):
        for param in layer.parameters():
            torch.nn.init.normal_(param, std=0.02)
    x = torch.randn(2, 16, config.hidden_size, requires_grad=True)
    cos, sin = rotary_cos_sin(16, config.head_dim, x)
    out = shard(x, cos, sin)
    out.sum().backward()  # no process group: its collectives do nothing
    assert out.shape == x.shape and shard.attn.num_local_heads == config.num_heads // 2
    assert sum(p.numel() for p in shard.parameters()) < sum(p.numel() for p in full.parameters())


def test_saved_bytes_count_activations_not_parameters() -> None:
    linear = torch.nn.Linear(32, 8)
    x = torch.randn(4, 32, requires_grad=True)
    assert saved_bytes(lambda: linear(x), list(linear.parameters())) == x.nbytes
    relu_in = torch.randn(4, 32, requires_grad=True)
    assert saved_bytes(lambda: torch.relu(relu_in * 2), []) == relu_in.nbytes  # relu's output


def test_an_absent_device_type_names_its_package(capsys) -> None:
    assert main(["profile", "--model", "tiny", "--device", "npu"]) == 2
    err = capsys.readouterr().err
    assert "--device npu" in err and "torch_npu" in err and err.count("\n") == 1


def test_a_model_the_runtime_cannot_build_is_not_profiled(capsys) -> None:
    assert main(["profile", "--model", "gpt3-175b", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "gelu MLP" in err and "write a profile by hand" in err


def test_busy_neighbours_run_while_the_body_does_and_stop_after() -> None:
    import multiprocessing

    from polychip.runtime.profile_load import busy_neighbours

    with busy_neighbours(1, TINY, torch.float32, micro_batch=1, seq_len=16):
        children = multiprocessing.active_children()
        assert len(children) == 1 and children[0].is_alive()
    assert not any(c.is_alive() for c in children)


def test_the_optimizer_is_timed_as_the_runtime_steps_it() -> None:
    from polychip.runtime.profile import PartProfiler
    from polychip.runtime.profile_timing import Timing

    parts = PartProfiler(TINY, torch.device("cpu"), "bf16", Timing(1, 3), lambda what: None)
    per_param, fixed_s, params = parts.optimizer(4 * TINY.layer_params, 1 << 20)
    assert per_param > 0 and fixed_s >= 0 and params >= 4 * TINY.layer_params
