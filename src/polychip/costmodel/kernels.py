"""What one kernel costs on a chip: a GEMM with a shape-dependent efficiency, a memory-bound
op at sustained memory bandwidth, fused attention, and the launch cost of each kernel.

A GEMM's output is cut into `GEMM_TILE` tiles, one per thread block; thread blocks run in
waves of `compute_units` (SMs, CUs) at a time, so a GEMM takes whole waves of whole tiles
(tile and wave quantization, NVIDIA's *Matrix Multiplication Background User's Guide*).
When there are fewer tiles than units the K dimension is split (split-K, as cuBLAS does) into
slices of at least `SPLIT_K_MIN_DEPTH`. Each unit runs at its share of the chip's *sustained*
large-GEMM rate (`compute_efficiency` x dense peak: a measured GEMM over the datasheet), and
no GEMM beats the roofline of its operands' bytes (Williams et al., *Roofline*, 2009).
Nothing here is fitted: the only chip figures are datasheet peaks, unit counts and measured
large-GEMM and memory efficiencies (docs/cost-model.md, "Per-op compute").
"""

from __future__ import annotations

import math

from polychip.spec.accelerators import Accelerator

GEMM_TILE = (128, 128)
"""Output tile (rows, columns) of one thread block: cuBLAS's typical Ampere/Hopper tile
(NVIDIA, *Matrix Multiplication Background User's Guide*, 2023, "Typical tile dimensions")."""

SPLIT_K_MIN_DEPTH = 256
"""Least K a split-K slice keeps: 8 steps of a 32-deep main loop, enough to fill a tile's
software pipeline (an assumption; docs/cost-model.md)."""

MEMORY_EFFICIENCY = 0.83
"""Sustained fraction of the datasheet memory bandwidth a streaming kernel reaches: 750 of
900 GB/s on V100 (Jia et al., *Dissecting the NVIDIA Volta GPU Architecture via
Microbenchmarking*, 2018)."""

LAUNCH_S = {"cpu": 7.0e-6, "cuda": 38.0e-6}
"""Seconds eager PyTorch spends issuing one kernel (Python, autograd, dispatch, the launch).
cpu: measured on the project's 2-core CI machine with benchmarks/dispatch.py -- the runtime's
block, forward + backward with gradients accumulating, at negligible size: 107 compute kernels
in 0.735 ms, 6.9 µs each (torch 2.13, one thread). cuda: measured on a lent H200 host (a
Firecracker VM, torch 2.11+cu130) with `polychip profile` (benchmarks/RESULTS-gpu.md): the
runtime's TinyLlama-1.1B block at micro-batch 2 x 2048 tokens is issue-bound -- forward
1.93 ms, backward 2.61 ms (micro-batch 1 takes as long) for the 38 + 80 kernels `blocks.py`
lists: 38 µs each (a bare-metal host issues faster; a profile of the node replaces it). Other
accelerator types take the cuda figure (an assumption: their eager stacks are no lighter)."""

FP32_PRECISIONS = ("fp32", "tf32")

SYNCHRONOUS_DEVICES = frozenset({"cpu"})
"""Devices whose kernels run in the issuing thread: launch and work add. An accelerator runs
asynchronously: the host issues the next kernel while the device works, so a kernel costs the
longer of the two."""


def launch_s(chip: Accelerator) -> float:
    """The chip's own figure (catalog or cluster file `kernel_launch_us`), else its device
    type's."""
    if chip.kernel_launch_s is not None:
        return chip.kernel_launch_s
    return LAUNCH_S.get(chip.device_type, LAUNCH_S["cuda"])


def with_launches(chip: Accelerator, device_s: float, kernels: int) -> float:
    """Seconds of `kernels` kernels doing `device_s` of device work in all (split evenly)."""
    if kernels <= 0:
        return device_s
    issue = launch_s(chip)
    if chip.device_type in SYNCHRONOUS_DEVICES:
        return device_s + kernels * issue
    return kernels * max(device_s / kernels, issue)


def stream_s(chip: Accelerator, n_bytes: float) -> float:
    """Device seconds of a memory-bound kernel moving `n_bytes` (read + written)."""
    return n_bytes / (chip.memory_bw_bytes_per_s * MEMORY_EFFICIENCY)


def _waves_s(chip: Accelerator, rate: float, tiles: int, tile_flops: float, k: int) -> float:
    """Seconds for `tiles` tiles of `tile_flops` each (K = k), on the chip's units in waves,
    splitting K when the tiles alone cannot fill one wave."""
    units = chip.compute_units
    if units is None:
        return tiles * tile_flops / rate
    split = 1
    if tiles < units:
        split = max(1, min(units // tiles, k // SPLIT_K_MIN_DEPTH))
    blocks = tiles * split
    waves = math.ceil(blocks / units)
    return waves * (tile_flops / split) / (rate / units)


def gemm_s(
    chip: Accelerator,
    precision: str,
    m: int,
    n: int,
    k: int,
    *,
    batch: int = 1,
    in_bytes: int,
    out_bytes: int,
) -> float:
    """Device seconds of `batch` products of an (m x k) by a (k x n) matrix."""
    if m <= 0 or n <= 0 or k <= 0 or batch <= 0:
        return 0.0
    rate = chip.peak_flops(precision) * chip.compute_efficiency
    tm, tn = GEMM_TILE
    if chip.compute_units is None:
        compute = 2.0 * batch * m * n * k / rate
    else:
        tiles = batch * math.ceil(m / tm) * math.ceil(n / tn)
        compute = _waves_s(chip, rate, tiles, 2.0 * tm * tn * k, k)
    moved = batch * ((m * k + k * n) * in_bytes + m * n * out_bytes)
    return max(compute, stream_s(chip, moved))


def flash_attention_s(
    chip: Accelerator,
    precision: str,
    *,
    sequences_heads: int,
    seq_len: int,
    head_dim: int,
    matmuls: int,
    causal: bool,
    n_bytes: float,
) -> float:
    """Device seconds of a fused (flash) attention pass: `matmuls` s x s x d products per
    (sequence, head) -- 2 forward (QK^T, PV), 5 backward (QK^T again, dV, dP, dQ, dK) --
    only the lower triangle when causal. Thread blocks own a tile of query rows
    (`GEMM_TILE[0]`) and sweep the keys, so waves are of (sequence, head, row-tile) blocks."""
    # flash kernels take 16-bit operands, at the fraction of the peak they sustain (measured
    # where the catalog has it: `Accelerator.flash_efficiency`); in fp32 (and tf32) SDPA
    # runs its memory-efficient kernel on the CUDA cores: the fp32 rate, not the TF32 units'
    if precision in FP32_PRECISIONS:
        rate = chip.peak_flops("fp32") * chip.compute_efficiency
    else:
        rate = chip.peak_flops(precision) * chip.flash_efficiency
    tiled = chip.compute_units is not None
    rows = GEMM_TILE[0] if tiled else seq_len  # query rows per thread block
    # keys a row sweeps on average: all of them, or under the causal mask the triangle
    # (whole row tiles of it on the diagonal)
    keys = min((seq_len + (rows if tiled else 1)) / 2, seq_len) if causal else seq_len
    tiles = sequences_heads * math.ceil(seq_len / rows)
    tile_flops = 2.0 * matmuls * rows * keys * head_dim
    compute = _waves_s(chip, rate, tiles, tile_flops, 0)
    return max(compute, stream_s(chip, n_bytes))
