"""Eager PyTorch's time per kernel on this machine's CPU: the figure behind the cost model's
`kernels.LAUNCH_S["cpu"]` (docs/cost-model.md, "Kernel launch").

Runs the runtime's own transformer block (polychip.runtime.layers.DecoderLayer) forward and
backward at a negligible size (hidden 64, 8 tokens: the arithmetic is nothing), counts the
compute kernels it dispatches (aten operators other than views) and divides its wall time by
them: the framework's cost per kernel (Python, dispatcher, autograd, allocator). Gradients
accumulate from step to step, as in training. The best of several repeats is reported (other
processes only ever add time). Not a timed test: run it on a quiet machine.

    python benchmarks/dispatch.py [--steps 200] [--repeats 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from polychip.runtime.layers import DecoderLayer, rotary_cos_sin
from polychip.runtime.tensor_parallel import NO_TP
from polychip.spec.model import ModelSpec

VIEWS = frozenset({
    "view", "t", "_unsafe_view", "transpose", "detach", "unsqueeze", "expand", "split",
    "slice", "squeeze", "alias", "as_strided", "_reshape_alias", "permute",
})  # fmt: skip


class _Count(TorchDispatchMode):
    """Counts the compute kernels (aten operators that are not views) dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] not in VIEWS:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ModelSpec("dispatch", 1, 64, 4, 4, 176, 256)
    layer = DecoderLayer(config, NO_TP)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, 8, 64, requires_grad=True)
    cos, sin = rotary_cos_sin(8, config.head_dim, x)

    def step() -> None:
        layer(x, cos, sin).sum().backward()

    for _ in range(20):  # warm up; gradients now exist and accumulate
        step()
    with _Count() as count:
        step()
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        best = min(best, (time.perf_counter() - start) / args.steps)
    out = {
        "torch": torch.__version__,
        "kernels_per_step": count.kernels,
        "step_s": best,
        "s_per_kernel": best / count.kernels,
    }
    print(f"torch {torch.__version__}: the runtime's block forward + backward, best of "
          f"{args.repeats} x {args.steps} steps")
    print(f"{count.kernels} compute kernels in {best * 1e3:.3f} ms: "
          f"{out['s_per_kernel'] * 1e6:.1f} µs per kernel")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
