"""One kernel on one chip: GEMM tile and wave quantization, split-K, the roofline, memory-bound
streams and launch costs (costmodel/kernels.py), and TP collectives (costmodel/tpcomm.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from polychip.costmodel.comm import ring_allreduce_time_s
from polychip.costmodel.kernels import (
    LAUNCH_S,
    MEMORY_EFFICIENCY,
    flash_attention_s,
    gemm_s,
    stream_s,
    with_launches,
)
from polychip.costmodel.tpcomm import (
    HOST_STAGED_FRACTION,
    HOST_STAGED_LATENCY_S,
    INTRA_NODE_LATENCY_S,
    tp_collective_s,
)
from polychip.spec.accelerators import lookup

A100 = lookup("a100")  # 108 SMs, 312 TFLOP/s bf16 dense, 0.83 of it sustained (FlagPerf)
RATE = 312e12 * 0.83


def _gemm(m: int, n: int, k: int, chip=A100, **kw) -> float:
    return gemm_s(chip, "bf16", m, n, k, in_bytes=2, out_bytes=2, **kw)


def test_a_large_gemm_runs_whole_waves_at_the_sustained_rate() -> None:
    # 8192^3: 64 x 64 = 4096 tiles of 128 x 128 in ceil(4096 / 108) = 38 waves of 108.
    t = _gemm(8192, 8192, 8192)
    assert t == pytest.approx(38 * 2 * 128 * 128 * 8192 / (RATE / 108))
    assert 2 * 8192**3 / t == pytest.approx(RATE * 4096 / (38 * 108))  # 99.8 % of sustained


def test_a_gemm_smaller_than_one_wave_leaves_units_idle() -> None:
    # GPT-2 medium at micro-batch 1: 1024 tokens x 1024 x 1024 is 64 tiles on 108 SMs, and
    # K = 1024 is too short to split (at least 256 per slice, 108 // 64 = 1 slice).
    t = _gemm(1024, 1024, 1024)
    assert 2 * 1024**3 / t == pytest.approx(RATE * 64 / 108)
    # Eight times the tokens: 512 tiles in 5 waves, 95 % of the sustained rate.
    assert 2 * 8192 * 1024**2 / _gemm(8192, 1024, 1024) == pytest.approx(RATE * 512 / 540)


def test_few_tiles_split_k() -> None:
    # 1024 x 512 x 4096: 32 tiles; K split in 3 (108 // 32) slices of 1365 > 256: 96 blocks.
    t = _gemm(1024, 512, 4096)
    assert t == pytest.approx(2 * 128 * 128 * 4096 / 3 / (RATE / 108))
    # K = 512 allows only 2 slices of 256.
    assert _gemm(1024, 512, 512) == pytest.approx(2 * 128 * 128 * 256 / (RATE / 108))


def test_tile_quantization_pads_ragged_edges() -> None:
    # 1000 x 1000 takes the tiles of 1024 x 1024: as long.
    assert _gemm(1000, 1000, 4096) == pytest.approx(_gemm(1024, 1024, 4096))


def test_a_thin_gemm_is_memory_bound() -> None:
    # One row times a 4096 x 4096 weight: reading the weight dominates.
    t = _gemm(1, 4096, 4096)
    moved = (4096 + 4096 * 4096) * 2 + 4096 * 2
    assert t == pytest.approx(moved / (2039e9 * MEMORY_EFFICIENCY))
    assert stream_s(A100, moved) == t


def test_flash_attention_computes_the_causal_triangle_in_waves_of_row_tiles() -> None:
    # One Llama-2 7B sequence (4096 tokens, 32 heads of 128) on A100: 32 x 32 row tiles of
    # 128 queries in ceil(1024 / 108) = 10 waves; under the causal mask a row tile sweeps
    # (4096 + 128) / 2 keys on average; forward QK^T and PV.
    def flash(chip, causal: bool, matmuls: int = 2) -> float:
        return flash_attention_s(chip, "bf16", sequences_heads=32, seq_len=4096, head_dim=128,
                                 matmuls=matmuls, causal=causal, n_bytes=0.0)  # fmt: skip

    # the rate fused attention sustains on A100: its attention_efficiency (0.60, FA2's
    # paper), not a large GEMM's 0.83
    flash_rate = 312e12 * 0.60
    assert flash(A100, True) == pytest.approx(10 * 2 * 2 * 128 * 2112 * 128 / (flash_rate / 108))
    assert flash(A100, True) / flash(A100, False) == pytest.approx(2112 / 4096)
    assert flash(A100, True, matmuls=5) == pytest.approx(2.5 * flash(A100, True))  # backward
    # a chip without the figure prices attention as a large GEMM
    unmeasured = dataclasses.replace(A100, attention_efficiency=None)
    assert flash(unmeasured, True) == pytest.approx(flash(A100, True) * 0.60 / 0.83)
    # fp32: the memory-efficient kernel on the CUDA cores, at the large-GEMM fraction
    assert flash_attention_s(A100, "fp32", sequences_heads=32, seq_len=4096, head_dim=128,
                             matmuls=2, causal=True, n_bytes=0.0) == pytest.approx(
        10 * 2 * 2 * 128 * 2112 * 128 / (19.5e12 * 0.83 / 108))
    # Gaudi 2's matrix engines (no SM tiles): the exact triangle.
    gaudi = lookup("gaudi2")
    full = 32 * 2 * 2 * 4096 * 4096 * 128 / (432e12 * 0.97)
    assert flash(gaudi, True) == pytest.approx(full * 2048.5 / 4096)
    assert flash(gaudi, False) == pytest.approx(full)


def test_precision_selects_the_peak() -> None:
    args = (8192, 8192, 8192)
    bf16 = gemm_s(A100, "bf16", *args, in_bytes=2, out_bytes=2)
    tf32 = gemm_s(A100, "tf32", *args, in_bytes=4, out_bytes=4)
    fp32 = gemm_s(A100, "fp32", *args, in_bytes=4, out_bytes=4)
    assert tf32 / bf16 == pytest.approx(312 / 156)
    assert fp32 / bf16 == pytest.approx(312 / 19.5)
    with pytest.raises(ValueError, match=r"v100.*tf32.*peak_tflops_tf32"):
        gemm_s(lookup("v100"), "tf32", *args, in_bytes=4, out_bytes=4)


def test_launches_bound_small_kernels() -> None:
    issue = LAUNCH_S["cuda"]
    # An accelerator runs asynchronously: a kernel costs the longer of its work and its issue.
    assert with_launches(A100, 1e-6, 1) == issue
    assert with_launches(A100, 1e-3, 1) == 1e-3
    assert with_launches(A100, 3 * issue, 4) == 4 * issue  # split evenly, each launch-bound
    # On the CPU the kernel runs in the issuing thread: they add.
    fictional = lookup("cpu-slow")  # the emulation's test chip issues for free (its figure)
    cpu = dataclasses.replace(fictional, kernel_launch_s=None)  # the device type's figure
    assert with_launches(cpu, 1e-3, 2) == pytest.approx(1e-3 + 2 * LAUNCH_S["cpu"])
    assert with_launches(fictional, 1e-3, 2) == 1e-3


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tp_collectives_at_bus_bandwidth(tp: int) -> None:
    n = 64e6
    # NVLink A100: 300 GB/s one way x 0.7 achievable (nccl-tests busbw ~200-210 GB/s).
    ring = ring_allreduce_time_s(n, tp, 300e9 * 0.7, INTRA_NODE_LATENCY_S)
    assert tp_collective_s(A100, "all-reduce", n, tp) == pytest.approx(ring)
    assert tp_collective_s(A100, "all-gather", n, tp) == pytest.approx(ring / 2)
    assert tp_collective_s(A100, "reduce-scatter", n, tp) == pytest.approx(ring / 2)
    # GeForce RTX 4090: no peer-to-peer, every step staged through host memory.
    staged = ring_allreduce_time_s(n, tp, 32e9 * HOST_STAGED_FRACTION, HOST_STAGED_LATENCY_S)
    rtx = lookup("rtx4090")
    assert not rtx.peer_to_peer
    assert tp_collective_s(rtx, "all-reduce", n, tp) == pytest.approx(staged)
    # ... several times slower than the same PCIe link with P2P (L40S, 0.75 of one way).
    l40s = tp_collective_s(lookup("l40s"), "all-reduce", n, tp)
    assert tp_collective_s(rtx, "all-reduce", n, tp) > 1.5 * l40s
    assert math.isclose(l40s, ring_allreduce_time_s(n, tp, 32e9 * 0.75, INTRA_NODE_LATENCY_S))
