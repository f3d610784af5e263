"""On a CUDA GPU: the two kernel classes that carry a transformer's FLOPs, measured beside the
cost model's price of the same shapes -- the large bf16 GEMMs (the compute ceiling's
"achievable FLOP/s" is the chip's dense peak x its `compute_efficiency`) and the fused causal
attention behind SDPA (priced at the same efficiency as a large GEMM).

    PYTHONPATH=src python3 benchmarks/gpu_kernels.py --chip h200 --json out/kernels.json

Each figure is the median of timed repeats (CUDA events) after warm-ups, on random data. The
model's figure is device time only (`kernels.gemm_s`, `kernels.flash_attention_s`): no issue
cost, which large kernels hide. Recorded in benchmarks/RESULTS-gpu.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from polychip.costmodel.kernels import flash_attention_s, gemm_s
from polychip.spec.accelerators import lookup

# (m, n, k): a square product as large GEMM benchmarks time it (MAMF), and Llama-2-7B's
# projections at 4,096 tokens per micro-batch (2 x 2048): q/k/v/o, gate/up, down
GEMMS = [(8192, 8192, 8192), (4096, 4096, 4096), (4096, 11008, 4096), (4096, 4096, 11008)]
# (batch, heads, seq_len, head_dim): Llama-2-7B's attention at micro-batch 2 and 1
ATTENTION = [(2, 32, 2048, 128), (1, 32, 4096, 128), (8, 32, 2048, 64)]


def _time_s(fn: Callable[[], object], warm: int = 5, reps: int = 20) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gemm_rows(chip_name: str) -> list[dict[str, object]]:
    chip, rows = lookup(chip_name), []
    for m, n, k in GEMMS:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        measured = _time_s(lambda a=a, b=b: a @ b)
        model = gemm_s(chip, "bf16", m, n, k, in_bytes=2, out_bytes=2)
        flops = 2.0 * m * n * k
        rows.append({"kernel": "gemm", "shape": [m, n, k], "measured_s": measured,
                     "model_s": model, "measured_tflops": flops / measured / 1e12,
                     "peak_fraction": flops / measured / chip.peak_flops("bf16")})
    return rows


def _attention_row(chip_name: str, b: int, h: int, s: int, d: int) -> dict[str, object]:
    chip = lookup(chip_name)
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grad = torch.randn_like(out)
    fwd = _time_s(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def fwd_bwd() -> None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(o, (q, k, v), grad)

    both = _time_s(fwd_bwd)
    io = 4.0 * b * h * s * d * 2  # q, k, v, o in bf16

    def model(matmuls: int, n_bytes: float) -> float:
        return flash_attention_s(chip, "bf16", sequences_heads=b * h, seq_len=s, head_dim=d,
                                 matmuls=matmuls, causal=True, n_bytes=n_bytes)

    flops = 2.0 * b * h * s * s * d / 2  # one s x s x d product, the causal half
    return {"kernel": "sdpa causal", "shape": [b, h, s, d],
            "measured_fwd_s": fwd, "model_fwd_s": model(2, io),
            "measured_fwd_bwd_s": both, "model_fwd_bwd_s": model(2, io) + model(5, 2 * io),
            "fwd_peak_fraction": 2 * flops / fwd / chip.peak_flops("bf16"),
            "bwd_peak_fraction": 5 * flops / (both - fwd) / chip.peak_flops("bf16")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chip", default="h200", help="catalog name of the GPU measured")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = gemm_rows(args.chip) + [_attention_row(args.chip, *a) for a in ATTENTION]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, chip {args.chip}")
    for r in rows:
        if r["kernel"] == "gemm":
            print(f"gemm {r['shape']}: measured {r['measured_s'] * 1e3:.3f} ms "
                  f"({r['measured_tflops']:.0f} TFLOP/s, {r['peak_fraction']:.3f} of peak), "
                  f"model {r['model_s'] * 1e3:.3f} ms")
        else:
            print(f"sdpa {r['shape']}: fwd measured {r['measured_fwd_s'] * 1e3:.3f} ms model "
                  f"{r['model_fwd_s'] * 1e3:.3f} ms; fwd+bwd measured "
                  f"{r['measured_fwd_bwd_s'] * 1e3:.3f} ms model "
                  f"{r['model_fwd_bwd_s'] * 1e3:.3f} ms; peak fraction fwd "
                  f"{r['fwd_peak_fraction']:.3f} bwd {r['bwd_peak_fraction']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
