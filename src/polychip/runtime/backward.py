"""One micro-batch's backward on a stage: whole (1F1B, GPipe, interleaved 1F1B), or split in
two for a zero-bubble schedule (ZB-H1, Qi et al. 2023, "Zero Bubble Pipeline Parallelism"):

  B  the gradient w.r.t. the stage's input only -- what the previous stage waits for;
  W  later, the gradients of the stage's weights -- what nobody waits for.

B is torch's own ``stage_backward_input`` (``torch.distributed.pipelining._backward``, what
its zero-bubble schedules run): one ``autograd.grad`` to the stage input that keeps the
graph, and at every node where a weight's path joins the input's (a weight's matrix
product, a norm's product), the gradient that reached it -- grouped by the weights behind
each node. Autograd computes only what the input gradient needs, so B skips the weights'
products.

W starts from those nodes with those gradients and goes to the weights only, so nothing of
B is computed again. It does not use torch's ``stage_backward_weight``, for two reasons:
that function writes ``weight.grad`` itself (``grad = dw`` or ``grad += dw``), bypassing the
parameters' gradient accumulators, so the post-accumulate-grad hooks the runtime hangs on
them (16-bit gradients added into the fp32 buffer; buckets of the overlapped gradient sync)
would never fire; and it runs the groups in the iteration order of a set of autograd nodes,
which differs between processes, while a W under sequence parallelism gathers over the TP
group, whose ranks must issue their collectives in one order. So W here runs
``torch.autograd.backward`` from the same nodes with the same gradients to the group's
parameters (their accumulators run, hooks included: gradients accumulate in place in the
flat buffer as in a whole backward), group by group in one fixed order, the backward's own
(the head first, the layers from the last down, each from its last weight).

- First stage: its input (token ids) has no gradient and no one waits for B; B does
  nothing and W the whole backward (under ZB-H1 the first stage's W follows its B at once).
- Last stage: B starts from the loss (times the fp16 loss scale, given by the caller).
- Tensor parallelism: autograd Functions whose backward computes both halves (the
  sequence-parallel column-parallel layers) are told which half runs
  (:func:`polychip.runtime.tp_regions.backward_half`); collectives on the input's path run
  in B, once.
- Recompute (``torch.utils.checkpoint``, non-reentrant): B recomputes a block's forward as
  a whole backward does; W's calls run inside one ``GraphExecGroup``, so W recomputes each
  block once more (not once per weight): two recomputations per micro-batch instead of one.

Between B and W the micro-batch's graph and saved activations stay alive, plus the
gradients kept at the joining nodes (about one more activation per weight's input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge
from torch.utils.checkpoint import GraphExecGroup

from polychip.runtime.tp_regions import backward_half


@dataclass
class Deferred:
    """What W needs of a micro-batch whose B ran: torch's parameter groups (the joining
    nodes and the gradients that reached them), or -- on a first stage -- the whole
    backward still to do (``output`` and its gradient)."""

    groups: list[dict[str, Any]] = field(default_factory=list)
    output: torch.Tensor | None = None
    grad: torch.Tensor | None = None


class StageBackward:
    """The backward passes of one stage's model; ``split``: B and W apart (zero bubble)."""

    def __init__(self, model: nn.Module, split: bool) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.split = split

    def whole(self, output: torch.Tensor, grad: torch.Tensor | None) -> None:
        """Input and weight gradients at once (``grad``: None for a loss)."""
        torch.autograd.backward(output, grad)

    def input_half(self, output: torch.Tensor, grad: torch.Tensor | None,
                   inputs: torch.Tensor | None) -> Deferred:
        """B: ``inputs.grad`` becomes the input gradient; the rest is deferred to W.
        ``inputs`` None: a first stage (nothing to do until W)."""
        if inputs is None:
            return Deferred(output=output, grad=grad)
        with backward_half("input"):
            _, groups = _pipelining().stage_backward_input(
                [output], None if grad is None else [grad], [inputs], iter(self.params))
        return Deferred(groups)

    def weight_half(self, deferred: Deferred) -> None:
        """W: the weight gradients of a micro-batch whose B ran, accumulated as a whole
        backward accumulates them."""
        if deferred.output is not None:
            self.whole(deferred.output, deferred.grad)
            return
        param_of = {_pipelining()._get_grad_fn_or_grad_acc(p): p for p in self.params}
        order = {id(p): i for i, p in enumerate(self.params)}
        groups = [(g, [param_of[n] for n in g["params"]]) for g in deferred.groups]
        groups.sort(key=lambda item: -max(order[id(p)] for p in item[1]))
        held = [id(p) for _, params in groups for p in params]
        assert len(held) == len(set(held)), "a weight in two of torch's parameter groups"
        with backward_half("weight"), GraphExecGroup():
            for group, params in groups:
                _weight_group(group, params)
        deferred.groups.clear()

    def both(self, output: torch.Tensor, grad: torch.Tensor | None,
             inputs: torch.Tensor | None) -> None:
        """The whole backward as this stage runs it: B then W when split."""
        if self.split:
            self.weight_half(self.input_half(output, grad, inputs))
        else:
            self.whole(output, grad)


def _pipelining() -> ModuleType:
    """torch's pipelining helpers, imported when a split backward first runs: the package
    pulls in torch.export, torch.fx and sympy (about 800 modules; seconds on a busy host),
    which no other schedule needs."""
    from torch.distributed.pipelining import _backward

    return _backward


def _weight_group(group: dict[str, Any], params: list[nn.Parameter]) -> None:
    """Backward from a group's joining nodes, with the gradients B kept there, to its
    parameters. Several nodes of one group may lie on each other's paths: each is held to
    its kept gradient (torch's clamp), so nothing is counted twice."""
    assert "grads" in group, "B reached no node of this group"  # torch would miss it too
    nodes, kept = group["intermediates"], group["grads"]
    edges, grads = [], []
    for node, saved in zip(nodes, kept, strict=True):
        for i, g in enumerate(saved):
            if g is not None:
                edges.append(GradientEdge(node, i))
                grads.append(g)
    clamps = ([node.register_prehook(lambda _, saved=saved: saved)
               for node, saved in zip(nodes, kept, strict=True)] if len(nodes) > 1 else [])
    try:
        if edges:
            torch.autograd.backward(edges, grads, inputs=params)
    finally:
        for handle in clamps:
            handle.remove()
