"""A decoder-only transformer (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU;
the blocks are in :mod:`polychip.runtime.layers`) built stage by stage.

A stage holds the global layers ``[layer_start, layer_end)``, optionally the embedding (first
stage) and the final norm plus output head (last stage). Layers live in an ``nn.ModuleDict``
keyed by the *global* layer index, so parameter names (``layers.5.attn.wq.weight``) do not
depend on the stage split: checkpoints are layout-independent and a stage can be compared with
the full model parameter by parameter.

The shape is the plan's :class:`polychip.spec.model.ModelSpec`, checked there. Under tensor
parallelism the stage holds its rank's part of every split parameter (:meth:`StageModule.
split_of`), the embedding and head by vocabulary rows with ``vocab_parallel``
(:mod:`polychip.runtime.vocab_parallel`); :meth:`StageModule.loss` is then the
vocabulary-parallel cross-entropy.

Initialisation draws every parameter from its own generator seeded by (seed, parameter name),
so a stage built alone gets bit-identical values to the same parameters of the full model,
whatever the TP degree (each rank keeps its part of the full tensor).
Build on the ``meta`` device and call :meth:`StageModule.materialize` so that a rank only
allocates its own layers (:func:`build_stage` does both).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.layers import INIT_STD, DecoderLayer, RMSNorm, rotary_cos_sin
from polychip.runtime.tensor_parallel import (
    NO_TP,
    Split,
    TensorParallel,
    split_of,
    sum_partial_grads_,
)
from polychip.runtime.vocab_parallel import VocabEmbedding, VocabHead, cross_entropy
from polychip.spec.model import ModelSpec


class StageModule(nn.Module):
    """Global layers [layer_start, layer_end), plus the embedding and/or the head, of the
    model ``spec``.

    ``forward``: the stage with the embedding takes token ids [b, s] (long), any other stage
    hidden states [b, s, hidden] ([b, s/t, hidden], its sequence part, under sequence
    parallelism); the stage with the head returns logits [b, s, vocab] (its vocabulary range
    under vocabulary parallelism: :meth:`loss` takes them), any other stage hidden states.

    With ``tie_embeddings``, a stage holding both embedding and head shares one weight
    (``embed.weight``; under vocabulary parallelism, the rank's rows of it). A head-only
    stage holds its own ``head.weight`` initialised to the same values as ``embed.weight``;
    keeping the two copies equal during training (summing their gradients) is the pipeline's
    job.

    Under tensor parallelism (``tp.size`` > 1) the blocks are split over the TP group
    (:mod:`polychip.runtime.tensor_parallel`); the embedding and head by vocabulary with
    ``tp.vocab_parallel``, else replicated like the norms. With ``recompute``, each block's
    activations are recomputed in the backward pass.
    """

    def __init__(self, spec: ModelSpec, layer_start: int, layer_end: int,
                 has_embedding: bool, has_head: bool, tp: TensorParallel = NO_TP,
                 recompute: bool = False,
                 chunks: tuple[tuple[int, int], ...] | None = None) -> None:
        super().__init__()
        _check_stage(spec, layer_start, layer_end, has_embedding, has_head, tp.size)
        self.spec = spec
        self.layer_start, self.layer_end = layer_start, layer_end
        # Interleaved 1F1B: the stage holds several model chunks ([start, end) each, in
        # order; the embedding goes with the first, the head with the last).
        self.chunks = chunks or ((layer_start, layer_end),)
        held = [i for a, b in self.chunks for i in range(a, b)]
        self.has_embedding, self.has_head = has_embedding, has_head
        self.tp, self.recompute = tp, recompute
        h, v = spec.hidden_size, spec.vocab_size
        self.embed = VocabEmbedding(v, h, tp) if has_embedding else None
        self.layers = nn.ModuleDict({str(i): DecoderLayer(spec, tp) for i in held})
        self.final_norm = RMSNorm(h, spec.norm_eps) if has_head else None
        self.head = VocabHead(v, h, tp) if has_head else None
        self._tie()

    @property
    def shares_tied_weight(self) -> bool:
        return self.spec.tie_embeddings and self.has_embedding and self.has_head

    def _tie(self) -> None:
        if self.shares_tied_weight:
            assert self.head is not None and self.embed is not None
            self.head.weight = self.embed.weight

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> StageModule:
        # Conversions such as to_empty() or .to() may replace the two references of a tied
        # weight by two tensors; point the head back at the embedding.
        super()._apply(fn, recurse)
        self._tie()
        return self

    def forward(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """The whole stage, or only model chunk ``chunk`` (interleaved 1F1B)."""
        first = chunk is None or chunk == 0
        last = chunk is None or chunk == len(self.chunks) - 1
        if self.embed is not None and first:
            seq_len = x.shape[1]
            x = self.embed(x)
        else:
            seq_len = x.shape[1] * (self.tp.size if self.tp.sp else 1)
        cos, sin = rotary_cos_sin(seq_len, self.spec.head_dim, x, self.spec.rope_theta)
        layers = (self.layers.values() if chunk is None
                  else [self.layers[str(i)] for i in range(*self.chunks[chunk])])
        for layer in layers:
            if self.recompute and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        if self.head is not None and last:
            assert self.final_norm is not None
            x = self.head(self.final_norm(x))
        return x

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the head's logits (vocabulary-parallel when they are this
        rank's vocabulary range) against targets [b, s]."""
        assert self.head is not None, "only the stage with the head computes the loss"
        return cross_entropy(logits, targets, self.tp, self.head.start)

    def partial_grad_params(self) -> list[nn.Parameter]:
        """Parameters whose gradient each TP rank holds only part of, until
        :meth:`sum_partial_grads_`: the norm weights under sequence parallelism (each rank
        normalised its own positions)."""
        if not self.tp.sp:
            return []
        return [p for n, p in self.named_parameters() if n.endswith("norm.weight")]

    def sum_partial_grads_(self) -> None:
        """Sum the partial gradients over the TP group (once per step, after the last
        backward and before any gradient reduction across replicas)."""
        sum_partial_grads_(self.partial_grad_params(), self.tp)

    def split_of(self, name: str) -> Split | None:
        """How parameter ``name`` is split over TP ranks (None: replicated)."""
        return split_of(name, tuple(self.get_parameter(name).shape), self.tp.size,
                        vocab_parallel=self.tp.vocab_parallel, vocab_size=self.spec.vocab_size)

    def shard(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the full tensor ``full`` of parameter ``name`` (a view)."""
        split = self.split_of(name)
        return full if split is None else split.part(full, self.tp.rank, self.tp.size)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Fill every parameter from a generator seeded by (seed, parameter name).

        Values are drawn in float32 on the CPU, then copied to the parameter's dtype and device,
        so the initial model is the same whatever the stage split, dtype or device; under TP a
        rank draws the full tensor and keeps its slice, so it is the same whatever the degree.
        """
        for name, param in self.named_parameters():
            shape, split = list(param.shape), self.split_of(name)
            if split is not None:
                shape[split.dim] = split.full
            full = _initial_value(self.spec, _init_name(self.spec, name), tuple(shape), seed)
            param.copy_(self.shard(name, full))

    def materialize(self, device: torch.device | str, seed: int,
                    dtype: torch.dtype | None = None) -> StageModule:
        """Allocate a meta-built stage on ``device`` (in ``dtype``) and initialise it."""
        self.to_empty(device=device)
        if dtype is not None:
            self.to(dtype=dtype)
        self.init_weights(seed)
        return self


def _check_stage(spec: ModelSpec, layer_start: int, layer_end: int, has_embedding: bool,
                 has_head: bool, tp_size: int) -> None:
    if spec.head_dim % 2:
        raise RuntimeSetupError(
            f"model {spec.name!r} has head_dim={spec.head_dim} (hidden_size / num_heads), "
            f"odd; rotary embeddings rotate pairs of channels, so make it even")
    for what, size in (("num_heads", spec.num_heads), ("num_kv_heads", spec.num_kv_heads),
                       ("ffn_hidden_size", spec.ffn_hidden_size)):
        if size % tp_size:
            raise RuntimeSetupError(
                f"tensor-parallel degree {tp_size} does not divide {what}={size}: each TP rank "
                f"holds an equal share of the heads and of the FFN width; use a TP degree "
                f"that divides num_heads, num_kv_heads and ffn_hidden_size")
    if not 0 <= layer_start <= layer_end <= spec.num_layers:
        raise RuntimeSetupError(
            f"stage layers [{layer_start}, {layer_end}) must satisfy 0 <= start <= end <= "
            f"num_layers={spec.num_layers}; give a layer range inside the model")
    if layer_start == layer_end and not (has_embedding or has_head):
        raise RuntimeSetupError(
            f"stage layers [{layer_start}, {layer_end}) are empty and the stage has neither the "
            f"embedding nor the head; give the stage at least one layer")
    if has_embedding and layer_start != 0:
        raise RuntimeSetupError(
            f"stage [{layer_start}, {layer_end}) has the embedding but does not start at layer "
            f"0; only the first stage (layer_start=0) can hold the embedding")
    if has_head and layer_end != spec.num_layers:
        raise RuntimeSetupError(
            f"stage [{layer_start}, {layer_end}) has the head but does not end at layer "
            f"num_layers={spec.num_layers}; only the last stage can hold the head")


def _init_name(spec: ModelSpec, name: str) -> str:
    # A tied head that lives apart from the embedding starts as a copy of the embedding.
    return "embed.weight" if spec.tie_embeddings and name == "head.weight" else name


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _initial_value(spec: ModelSpec, name: str, shape: tuple[int, ...], seed: int
                   ) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)  # q/k/v biases (as Hugging Face initialises them)
    std = INIT_STD
    if name.endswith(("attn.wo.weight", "mlp.w_down.weight")):
        std /= math.sqrt(2 * spec.num_layers)  # residual outputs (GPT-2 scaling)
    generator = torch.Generator(device="cpu").manual_seed(_name_seed(seed, name))
    return torch.randn(shape, generator=generator, dtype=torch.float32) * std


def build_stage(spec: ModelSpec, layer_start: int, layer_end: int, *, seed: int = 0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                has_embedding: bool | None = None, has_head: bool | None = None,
                tp: TensorParallel = NO_TP, recompute: bool = False,
                chunks: tuple[tuple[int, int], ...] | None = None) -> StageModule:
    """Build a stage on the meta device and materialise only it on ``device``.

    ``has_embedding`` / ``has_head`` default to whether the stage is first / last.
    """
    if has_embedding is None:
        has_embedding = layer_start == 0
    if has_head is None:
        has_head = layer_end == spec.num_layers
    with torch.device("meta"):
        stage = StageModule(spec, layer_start, layer_end, has_embedding, has_head, tp=tp,
                            recompute=recompute, chunks=chunks)
    return stage.materialize(device, seed, dtype)


def build_full_model(spec: ModelSpec, *, seed: int = 0, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> StageModule:
    """The whole model as one stage: all layers, the embedding and the head."""
    return build_stage(spec, 0, spec.num_layers, seed=seed, device=device, dtype=dtype)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every token of logits [b, s, vocab] against targets [b, s]."""
    return cross_entropy(logits, targets, NO_TP, 0)
