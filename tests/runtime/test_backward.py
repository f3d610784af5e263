"""A backward split in B (the input gradient) and W (the weight gradients): B produces no
weight gradient, W all of them, in the backward's order through the parameters' own
accumulators, each exactly as the whole backward computes it; under recompute each block
is recomputed once by B and once by W."""

from __future__ import annotations

import pytest
import torch

from polychip.runtime import layers
from polychip.runtime.backward import StageBackward
from polychip.runtime.model import build_stage

from .plans import TINY4

F64 = torch.float64


def _stage(start: int, end: int, recompute: bool = False):  # type: ignore[no-untyped-def]
    stage = build_stage(TINY4, start, end, dtype=F64, recompute=recompute)
    for p in stage.parameters():
        p.grad = torch.zeros_like(p)  # as the runtime's buffer views: accumulated in place
    return stage


def _pass(stage, backward, split: bool, micro: int):  # type: ignore[no-untyped-def]
    """Forward and backward of micro-batch ``micro``; the input gradient (None on a first
    stage), checking that B leaves every weight gradient as it was."""
    gen = torch.Generator().manual_seed(micro)
    first, last = stage.has_embedding, stage.has_head
    x = (torch.randint(0, 256, (2, 8), generator=gen) if first
         else torch.randn(2, 8, 16, dtype=F64, generator=gen).requires_grad_())
    out = stage(x)
    grad = None if last else torch.randn(out.shape, dtype=F64, generator=gen)
    if last:
        out = stage.loss(out, torch.randint(0, 256, (2, 8), generator=gen))
    if not split:
        backward.whole(out, grad)
        return None if first else x.grad
    before = [p.grad.clone() for p in stage.parameters()]
    deferred = backward.input_half(out, grad, None if first else x)
    for p, b in zip(stage.parameters(), before, strict=True):
        assert torch.equal(p.grad, b), "B touched a weight gradient"
    dx = None if first else x.grad.clone()
    backward.weight_half(deferred)
    return dx


@pytest.mark.parametrize(("start", "end", "recompute"), [
    (0, 2, False), (1, 3, True), (2, 4, False), (1, 4, True)],
    ids=["first stage", "middle, recompute", "last stage", "last, recompute"])
def test_b_then_w_equals_the_whole_backward(start: int, end: int, recompute: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    whole, split = _stage(start, end, recompute), _stage(start, end, recompute)
    fired: list[str] = []
    for name, p in split.named_parameters():
        p.register_post_accumulate_grad_hook(lambda _, name=name: fired.append(name))
    calls = [0]
    forward = layers.DecoderLayer.forward

    def counted(self, *args):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return forward(self, *args)

    monkeypatch.setattr(layers.DecoderLayer, "forward", counted)
    for micro in range(2):  # two micro-batches accumulate
        want = _pass(whole, StageBackward(whole, split=False), False, micro)
        calls[0], fired[:] = 0, []
        got = _pass(split, StageBackward(split, split=True), True, micro)
        assert (got is None) == (want is None) and (got is None or torch.equal(got, want))
        blocks = end - start
        assert calls[0] == blocks * (3 if recompute else 1)  # forward; B's and W's recompute
        names = [n for n, _ in split.named_parameters()]
        assert fired == names[::-1]  # W: head first, layers from the last weight down
    for (name, p), q in zip(split.named_parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-15, msg=name)
