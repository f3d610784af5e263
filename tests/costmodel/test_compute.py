"""Compute time per stage: per-op block, embedding and head; precisions, micro-batch, TP,
recompute, profiles."""

from __future__ import annotations

import pytest

from polychip.costmodel.blocks import Arch, Shard, block_forward
from polychip.costmodel.compute import (
    StageTimes,
    block_times,
    embedding_times,
    head_times,
    pass_s,
)
from polychip.costmodel.ends import embedding_passes
from polychip.costmodel.estimate import CostModel
from polychip.costmodel.kernels import MEMORY_EFFICIENCY
from polychip.costmodel.measured import BlockFigures, NoMeasurements
from polychip.costmodel.ops import Collective, backward_pass, gemm_flops
from polychip.costmodel.tpcomm import tp_collective_s
from polychip.spec.accelerators import lookup
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec, load_model

LLAMA = load_model("llama2-7b")
# GPT-2 medium (345M): the small GPT-style model of public measured runs.
GPT2M = load_model("gpt2-medium")


def _job(seq: int = 1024, **kw) -> TrainingJob:
    return TrainingJob(global_batch=8, seq_len=seq, **kw)


def _per_token(chip: str, model: ModelSpec, mb: int, tp: int = 1, **kw) -> float:
    job = _job(**kw)
    return block_times(lookup(chip), model, job, mb, tp).total_s / (mb * job.seq_len)


def test_block_flops_are_the_models() -> None:
    # The GEMMs of a block forward are the model's matmul FLOPs: 2 per MAC over q k v o and
    # the MLP, plus QK^T and PV over the full s x s (eager: the masked half is computed).
    job = _job(seq=2048, attention="eager")
    fwd = block_forward(Shard(LLAMA, job, 2, 1))
    assert gemm_flops(fwd) == pytest.approx(LLAMA.layer_flops_per_token(2048) * 2 * 2048)
    # Backward: twice the forward's GEMM FLOPs (an input and an operand gradient each).
    assert gemm_flops(backward_pass(fwd, 2, 4)) == pytest.approx(2 * gemm_flops(fwd))


def test_per_token_time_falls_as_the_micro_batch_grows() -> None:
    # GPT-2 medium, 1024 tokens per sequence, fp16. At micro-batch 1 the largest GEMM
    # (tokens x 4096 x 1024) is 8 x 32 = 256 tiles: 4 waves of 80 V100 SMs (0.80 full), 3 of
    # 108 A100 SMs (0.79); at 8 it is 2048 tiles (0.98, 0.998); and most elementwise kernels
    # of micro-batch 1 last less than their launch. The model must gain at least the waves'
    # share and at most 8x (all of micro-batch 1 issue-bound, micro-batch 8 paying the same
    # issue once); measured on an H200 (tests below), TinyLlama's block gained 3.3x.
    for chip, units in (("v100", 80), ("a100", 108)):
        t = [_per_token(chip, GPT2M, mb, precision="fp16") for mb in (1, 2, 4, 8)]
        assert t[0] > t[1] > t[2] > t[3], chip

        def fill(tiles: int, units: int = units) -> float:
            return tiles / (-(-tiles // units) * units)

        assert fill(2048) / fill(256) < t[0] / t[3] < 8.0, (chip, t[0] / t[3])


def test_fp32_is_slower_than_tf32_slower_than_bf16_on_a100() -> None:
    bf16, tf32, fp32 = (_per_token("a100", LLAMA, 1, precision=p) for p in ("bf16", "tf32", "fp32"))
    # TF32 keeps fp32 tensors: half the GEMM peak and twice the bytes -- at most 2x bf16.
    assert 1.5 < tf32 / bf16 <= 2.0
    # fp32 on CUDA cores: 19.5 of TF32's 156 TFLOP/s on GEMMs, the same bytes: below 8x.
    assert 4.0 < fp32 / tf32 < 8.0


def test_eager_attention_is_slower_than_fused() -> None:
    fused = _per_token("a100", LLAMA, 1, seq=4096)
    eager = _per_token("a100", LLAMA, 1, seq=4096, attention="eager")
    assert eager > 1.1 * fused  # s x s scores written and read four times, plus no causal skip


def test_tp_without_peer_to_peer_does_not_pay_off_for_a_small_model() -> None:
    # GPT-2 medium, micro-batch 8: each of the block's four (two each way) all-reduces moves
    # 8 x 1024 x 1024 x 2 bytes. Through host memory (RTX 4090, 15 GB/s) they cost more than
    # TP saves; over A100 NVLink (210 GB/s) they cost a sixth of the compute TP halves (not
    # 2x either way: the kernels whose issue outlasts their work do not shrink with TP).
    def speedup(chip: str, tp: int) -> float:
        return _per_token(chip, GPT2M, 8, 1, precision="fp16") / _per_token(
            chip, GPT2M, 8, tp, precision="fp16"
        )

    assert speedup("rtx4090", 2) < 1.0
    assert speedup("a100", 2) > 1.25
    assert speedup("a100", 4) > speedup("a100", 2)


def test_sequence_parallelism_swaps_each_all_reduce_for_a_gather_and_a_scatter() -> None:
    def count(job: TrainingJob, kind: str) -> tuple[int, int]:
        fwd = block_forward(Shard(LLAMA, job, 1, 4))
        bwd = backward_pass(fwd, 2, 4)
        return tuple(  # type: ignore[return-value]
            sum(isinstance(op, Collective) and op.forward == kind for op in ops)
            for ops in (fwd, bwd)
        )

    sp, plain = _job(), _job(sequence_parallel=False)
    assert count(plain, "all-reduce") == (2, 2)  # Megatron: after each row-parallel GEMM, ...
    assert count(sp, "all-reduce") == (0, 0)
    assert count(sp, "all-gather") == (2, 4)  # ... the backward re-gathers the saved shards
    assert count(sp, "reduce-scatter") == (2, 2)


def test_the_embedding_backward_touches_the_whole_table() -> None:
    chip, model = lookup("h100"), load_model("llama3-8b")  # V = 128256, h = 4096
    job = _job(seq=4096)
    emb = embedding_times(chip, model, job, 1, 1)
    # Zero the V x h bf16 gradient, add it into the fp32 buffer (read 2, read + write 4).
    table = 128256 * 4096 * (2 + 2 + 2 * 4)
    assert emb.bwd_s >= table / (3350e9 * MEMORY_EFFICIENCY)
    assert emb.bwd_s > 20 * emb.fwd_s
    assert emb.bwd_s > 0.1 * block_times(chip, model, job, 1, 1).total_s


def test_vocab_parallel_divides_the_head_and_prices_the_embedding_all_reduce() -> None:
    chip, model = lookup("a100"), load_model("llama3-8b")
    split = _job(sequence_parallel=False)
    whole = _job(sequence_parallel=False, vocab_parallel=False)
    one = head_times(chip, model, split, 2, 1)
    assert head_times(chip, model, split, 2, 4).fwd_s < 0.35 * one.fwd_s
    assert head_times(chip, model, whole, 2, 4).fwd_s > 0.95 * one.fwd_s  # all V on every rank
    # The vocabulary-parallel embedding all-reduces its b x s x h output.
    ar = tp_collective_s(chip, "all-reduce", 2 * 1024 * 4096 * 2, 4)
    assert embedding_times(chip, model, split, 2, 4).fwd_s > ar
    assert embedding_times(chip, model, whole, 2, 4).fwd_s < ar


def _cost_model(profile=None) -> CostModel:
    cluster = cluster_from_dict({"nodes": [{"chip": "h100", "count": 1, "nic_gbps": 400}]})
    return CostModel(cluster, LLAMA, TrainingJob(global_batch=8, seq_len=4096), profile)


def test_stage_time_is_linear_in_layers_and_recompute_adds_a_forward() -> None:
    cm = _cost_model()
    chip = cm.chip("h100")
    t4 = cm.stage_times(chip, 4, 1, 1, False, False, False)
    block = block_times(chip, LLAMA, cm.job, 1, 1)
    assert t4.fwd_s == pytest.approx(4 * block.fwd_s)
    assert t4.bwd_s == pytest.approx(4 * block.bwd_s)
    again = cm.stage_times(chip, 4, 1, 1, False, False, True)
    assert again.bwd_s == pytest.approx(t4.bwd_s + t4.fwd_s)


def test_first_and_last_stage_add_embedding_and_head() -> None:
    cm = _cost_model()
    chip = cm.chip("h100")
    mid = cm.stage_times(chip, 4, 2, 1, False, False, False)
    first = cm.stage_times(chip, 4, 2, 1, True, False, False)
    last = cm.stage_times(chip, 4, 2, 1, False, True, False)
    emb, head = (f(chip, LLAMA, cm.job, 1, 2) for f in (embedding_times, head_times))
    assert first.bwd_s == pytest.approx(mid.bwd_s + emb.bwd_s)
    assert last.fwd_s == pytest.approx(mid.fwd_s + head.fwd_s)


class _Profile(NoMeasurements):
    """A measured profile that knows one block point and one head point."""

    def block(self, chip: str, tp: int, micro_batch: int, seq_len: int):
        if (chip, tp, micro_batch, seq_len) == ("h100", 1, 1, 4096):
            return BlockFigures(0.001, 0.003, recompute_bwd_s=None, activation_bytes=None)
        return None

    def head(self, chip: str, tp: int, micro_batch: int, seq_len: int):
        return StageTimes(0.010, 0.020) if micro_batch == 1 else None


def test_a_profile_replaces_analytic_components_where_it_has_a_point() -> None:
    cm = _cost_model(_Profile())
    chip = cm.chip("h100")
    measured = cm.stage_times(chip, 10, 1, 1, False, True, True)
    assert measured.fwd_s == pytest.approx(0.010 + 0.010)
    assert measured.bwd_s == pytest.approx(0.040 + 0.020)  # 10 x (3 ms + a 1 ms recompute)
    analytic = cm.stage_times(chip, 10, 1, 2, False, False, False)  # no point: analytic
    assert analytic.fwd_s == pytest.approx(10 * block_times(chip, LLAMA, cm.job, 2, 1).fwd_s)
    assert pass_s(chip, cm.job, [], 1) == 0.0


def test_the_block_follows_the_models_norm_positions_and_biases() -> None:
    # GPT-NeoX-like: a plain GELU MLP, LayerNorm, rotary positions, biases.
    neox = ModelSpec("neox", 4, 1024, 16, 16, 4096, 50432, mlp="gelu", family="gpt_neox",
                     norm="layernorm", position="rope", qkv_bias=True, attn_out_bias=True,
                     mlp_bias=True)
    arch = Arch.of(neox)
    assert (arch.rms_norm, arch.rotary, arch.learned_positions, arch.qkv_bias) == (
        False, True, False, True)  # fmt: skip
    names = [getattr(op, "name", "") for op in block_forward(Shard(neox, _job(), 1, 1))]
    assert "rope.q" in names and "gelu" in names and "w_gate" not in names
    norm = next(op for op in block_forward(Shard(neox, _job(), 1, 1)) if op.name == "attn_norm")
    assert norm.kernels == 1  # native LayerNorm, not the 8 kernels of an eager RMSNorm
    # No learned positions: the embedding is one gather forward.
    fwd, _ = embedding_passes(Shard(neox, _job(), 1, 1))
    assert [op.name for op in fwd] == ["embed.gather"]
    # Llama: RMSNorm, rotary, no biases, gated; GPT-2: LayerNorm, learned, biases, plain.
    assert Arch.of(LLAMA) == Arch(True, True, False, False, False, False, True)
    assert Arch.of(GPT2M) == Arch(False, False, True, True, True, True, False)
