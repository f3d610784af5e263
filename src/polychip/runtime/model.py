"""A decoder-only transformer (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU;
the blocks are in :mod:`polychip.runtime.layers`) built stage by stage.

A stage holds the global layers ``[layer_start, layer_end)``, optionally the embedding (first
stage) and the final norm plus output head (last stage). Layers live in an ``nn.ModuleDict``
keyed by the *global* layer index, so parameter names (``layers.5.attn.wq.weight``) do not
depend on the stage split: checkpoints are layout-independent and a stage can be compared with
the full model parameter by parameter.

Initialisation draws every parameter from its own generator seeded by (seed, parameter name),
so a stage built alone gets bit-identical values to the same parameters of the full model.
Build on the ``meta`` device and call :meth:`StageModule.materialize` so that a rank only
allocates its own layers (:func:`build_stage` does both).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.layers import INIT_STD, DecoderLayer, ModelConfig, RMSNorm, rotary_cos_sin
from polychip.runtime.tensor_parallel import (
    NO_TP,
    TensorParallel,
    full_shape,
    shard_of,
)


class StageModule(nn.Module):
    """Global layers [layer_start, layer_end), plus the embedding and/or the head.

    ``forward``: the stage with the embedding takes token ids [b, s] (long), any other stage
    hidden states [b, s, hidden]; the stage with the head returns logits [b, s, vocab], any
    other stage hidden states.

    With ``tie_embeddings``, a stage holding both embedding and head shares one weight
    (``embed.weight``). A head-only stage holds its own ``head.weight`` initialised to the same
    values as ``embed.weight``; keeping the two copies equal during training (summing their
    gradients) is the pipeline's job.

    Under tensor parallelism (``tp.size`` > 1) the blocks are split over the TP group
    (:mod:`polychip.runtime.tensor_parallel`); the embedding, norms and head are replicated.
    With ``recompute``, each block's activations are recomputed in the backward pass.
    """

    def __init__(self, config: ModelConfig, layer_start: int, layer_end: int,
                 has_embedding: bool, has_head: bool, tp: TensorParallel = NO_TP,
                 recompute: bool = False,
                 chunks: tuple[tuple[int, int], ...] | None = None) -> None:
        super().__init__()
        _check_stage(config, layer_start, layer_end, has_embedding, has_head, tp.size)
        self.config = config
        self.layer_start, self.layer_end = layer_start, layer_end
        # Interleaved 1F1B: the stage holds several model chunks ([start, end) each, in
        # order; the embedding goes with the first, the head with the last).
        self.chunks = chunks or ((layer_start, layer_end),)
        held = [i for a, b in self.chunks for i in range(a, b)]
        self.has_embedding, self.has_head = has_embedding, has_head
        self.tp, self.recompute = tp, recompute
        h = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, h) if has_embedding else None
        self.layers = nn.ModuleDict({str(i): DecoderLayer(config, tp) for i in held})
        self.final_norm = RMSNorm(h, config.norm_eps) if has_head else None
        self.head = nn.Linear(h, config.vocab_size, bias=False) if has_head else None
        self._tie()

    @property
    def shares_tied_weight(self) -> bool:
        return self.config.tie_embeddings and self.has_embedding and self.has_head

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
            x = self.embed(x)
        cos, sin = rotary_cos_sin(x.shape[1], self.config.head_dim, self.config.rope_theta, x)
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

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Fill every parameter from a generator seeded by (seed, parameter name).

        Values are drawn in float32 on the CPU, then copied to the parameter's dtype and device,
        so the initial model is the same whatever the stage split, dtype or device; under TP a
        rank draws the full tensor and keeps its slice, so it is the same whatever the degree.
        """
        tp = self.tp
        for name, param in self.named_parameters():
            shape = full_shape(name, tuple(param.shape), tp.size)
            full = _initial_value(self.config, _init_name(self.config, name), shape, seed)
            param.copy_(shard_of(full, name, tp.rank, tp.size))

    def materialize(self, device: torch.device | str, seed: int,
                    dtype: torch.dtype | None = None) -> StageModule:
        """Allocate a meta-built stage on ``device`` (in ``dtype``) and initialise it."""
        self.to_empty(device=device)
        if dtype is not None:
            self.to(dtype=dtype)
        self.init_weights(seed)
        return self


def _check_stage(config: ModelConfig, layer_start: int, layer_end: int, has_embedding: bool,
                 has_head: bool, tp_size: int) -> None:
    for what, size in (("num_heads", config.num_heads), ("num_kv_heads", config.num_kv_heads),
                       ("ffn_hidden_size", config.ffn_hidden_size)):
        if size % tp_size:
            raise RuntimeSetupError(
                f"tensor-parallel degree {tp_size} does not divide {what}={size}: each TP rank "
                f"holds an equal share of the heads and of the FFN width; use a TP degree "
                f"that divides num_heads, num_kv_heads and ffn_hidden_size")
    if not 0 <= layer_start <= layer_end <= config.num_layers:
        raise RuntimeSetupError(
            f"stage layers [{layer_start}, {layer_end}) must satisfy 0 <= start <= end <= "
            f"num_layers={config.num_layers}; give a layer range inside the model")
    if layer_start == layer_end and not (has_embedding or has_head):
        raise RuntimeSetupError(
            f"stage layers [{layer_start}, {layer_end}) are empty and the stage has neither the "
            f"embedding nor the head; give the stage at least one layer")
    if has_embedding and layer_start != 0:
        raise RuntimeSetupError(
            f"stage [{layer_start}, {layer_end}) has the embedding but does not start at layer "
            f"0; only the first stage (layer_start=0) can hold the embedding")
    if has_head and layer_end != config.num_layers:
        raise RuntimeSetupError(
            f"stage [{layer_start}, {layer_end}) has the head but does not end at layer "
            f"num_layers={config.num_layers}; only the last stage can hold the head")


def _init_name(config: ModelConfig, name: str) -> str:
    # A tied head that lives apart from the embedding starts as a copy of the embedding.
    return "embed.weight" if config.tie_embeddings and name == "head.weight" else name


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _initial_value(config: ModelConfig, name: str, shape: tuple[int, ...], seed: int
                   ) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    std = INIT_STD
    if name.endswith(("attn.wo.weight", "mlp.w_down.weight")):
        std /= math.sqrt(2 * config.num_layers)  # residual outputs (GPT-2 scaling)
    generator = torch.Generator(device="cpu").manual_seed(_name_seed(seed, name))
    return torch.randn(shape, generator=generator, dtype=torch.float32) * std


def build_stage(config: ModelConfig, layer_start: int, layer_end: int, *, seed: int = 0,
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
        has_head = layer_end == config.num_layers
    with torch.device("meta"):
        stage = StageModule(config, layer_start, layer_end, has_embedding, has_head, tp=tp,
                            recompute=recompute, chunks=chunks)
    return stage.materialize(device, seed, dtype)


def build_full_model(config: ModelConfig, *, seed: int = 0, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> StageModule:
    """The whole model as one stage: all layers, the embedding and the head."""
    return build_stage(config, 0, config.num_layers, seed=seed, device=device, dtype=dtype)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every token of logits [b, s, vocab] against targets [b, s]."""
    flat = logits.reshape(-1, logits.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.cross_entropy(flat, targets.reshape(-1))
