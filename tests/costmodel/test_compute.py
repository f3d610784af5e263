"""Compute time per stage: roofline per block, TP, recompute, chips, profiles."""

from __future__ import annotations

import pytest

from polychip.costmodel.comm import ring_allreduce_time_s
from polychip.costmodel.compute import (
    INTRA_NODE_LATENCY_S,
    block_times,
    embedding_times,
    head_times,
)
from polychip.costmodel.estimate import CostModel
from polychip.spec.accelerators import lookup
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

LLAMA = load_model("llama2-7b")


def test_large_block_is_compute_bound_at_peak_times_efficiency() -> None:
    h100 = lookup("h100")
    seq, mb = 4096, 2
    t = block_times(h100, LLAMA, seq, mb, 1, "bf16")
    h, f = 4096, 11008
    # Forward FLOPs per token: 2 per multiply-add over q k v o (4 h^2) and the SwiGLU MLP
    # (3 h f), plus QK^T and AV (2 x 2 s h).
    flops = (2 * (4 * h * h + 3 * h * f) + 4 * seq * h) * seq * mb
    rate = 989.4e12 * 0.62
    assert t.fwd_s == pytest.approx(flops / rate)
    assert t.bwd_s == pytest.approx(2 * flops / rate)  # backward: twice the forward
    assert t.total_s == t.fwd_s + t.bwd_s


def test_small_block_is_memory_bound() -> None:
    h100 = lookup("h100")
    t = block_times(h100, LLAMA, 1, 1, 1, "bf16")  # one token: reading the weights dominates
    weights = 2.0 * LLAMA.layer_params
    assert t.fwd_s == pytest.approx(
        (weights + 2 * LLAMA.layer_activation_bytes_per_token()) / 3350e9
    )
    assert t.fwd_s > 2 * (2 * LLAMA.layer_params + 4 * 4096) / (989.4e12 * 0.62)


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tp_divides_the_work_and_adds_two_allreduces_per_direction(tp: int) -> None:
    chip = lookup("h800")
    seq, mb = 4096, 1
    one = block_times(chip, LLAMA, seq, mb, 1, "bf16")
    many = block_times(chip, LLAMA, seq, mb, tp, "bf16")
    # Megatron: an all-reduce of the b x s x h activations after attention and after the
    # MLP, forward and backward, over the intra-node link (one direction of NVLink).
    ar = ring_allreduce_time_s(2.0 * seq * mb * 4096, tp, 200e9, INTRA_NODE_LATENCY_S)
    assert many.fwd_s - 2 * ar == pytest.approx(one.fwd_s / tp)
    assert many.bwd_s - 2 * ar == pytest.approx(one.bwd_s / tp)
    assert many.total_s < one.total_s  # TP still pays off on NVLink at this size


def test_a_faster_chip_takes_less_time() -> None:
    def t(chip: str) -> float:
        return block_times(lookup(chip), LLAMA, 4096, 1, 1, "bf16").total_s

    assert t("h100") < t("a100") < t("ascend-910b") < t("h20")
    assert t("h100") == pytest.approx(t("a100") * 312 / 989.4)  # same efficiency, peak ratio


def test_precision_selects_the_peak() -> None:
    v100 = lookup("v100")
    assert block_times(v100, LLAMA, 2048, 1, 1, "fp16").fwd_s > 0
    with pytest.raises(ValueError, match="bf16"):
        block_times(v100, LLAMA, 2048, 1, 1, "bf16")


def test_head_and_embedding() -> None:
    chip = lookup("h100")
    seq, mb = 4096, 1
    head = head_times(chip, LLAMA, seq, mb, 1, "bf16")
    assert head.fwd_s == pytest.approx(2 * 32000 * 4096 * seq / (989.4e12 * 0.62))
    assert head_times(chip, LLAMA, seq, mb, 4, "bf16").fwd_s == pytest.approx(head.fwd_s / 4)
    emb = embedding_times(chip, LLAMA, seq, mb, 1)
    assert emb.fwd_s == pytest.approx(2 * seq * 4096 / 3350e9)
    assert emb.bwd_s == pytest.approx(2 * emb.fwd_s)


def _cost_model(profile=None) -> CostModel:
    cluster = cluster_from_dict({"nodes": [{"chip": "h100", "count": 1, "nic_gbps": 400}]})
    return CostModel(cluster, LLAMA, TrainingJob(global_batch=8, seq_len=4096), profile)


def test_stage_time_is_linear_in_layers() -> None:
    cm = _cost_model()
    chip = cm.chip("h100")
    t4 = cm.stage_times(chip, 4, 1, 1, False, False, False)
    t8 = cm.stage_times(chip, 8, 1, 1, False, False, False)
    assert t8.fwd_s == pytest.approx(2 * t4.fwd_s)
    assert t8.bwd_s == pytest.approx(2 * t4.bwd_s)
    block = block_times(chip, LLAMA, 4096, 1, 1, "bf16")
    assert t4.fwd_s == pytest.approx(4 * block.fwd_s)


def test_recompute_adds_one_forward_to_the_backward() -> None:
    cm = _cost_model()
    chip = cm.chip("h100")
    plain = cm.stage_times(chip, 6, 2, 1, False, False, False)
    again = cm.stage_times(chip, 6, 2, 1, False, False, True)
    assert again.fwd_s == plain.fwd_s
    assert again.bwd_s == pytest.approx(plain.bwd_s + plain.fwd_s)


def test_first_and_last_stage_add_embedding_and_head() -> None:
    cm = _cost_model()
    chip = cm.chip("h100")
    mid = cm.stage_times(chip, 4, 1, 1, False, False, False)
    first = cm.stage_times(chip, 4, 1, 1, True, False, False)
    last = cm.stage_times(chip, 4, 1, 1, False, True, False)
    emb = embedding_times(chip, LLAMA, 4096, 1, 1)
    head = head_times(chip, LLAMA, 4096, 1, 1, "bf16")
    assert first.fwd_s == pytest.approx(mid.fwd_s + emb.fwd_s)
    assert last.bwd_s == pytest.approx(mid.bwd_s + head.bwd_s)

