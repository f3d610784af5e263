"""A trained model written back in Hugging Face form: ``config.json`` and ``model.safetensors``
that ``transformers`` loads (``AutoModelForCausalLM.from_pretrained``), for the Llama,
Mistral and Qwen2 families (names: :mod:`.hf_weights`).

:func:`gather_full_state` assembles the whole model on rank 0 from a run's ranks: replica 0
holds every layer once; its stages send their parameters, each TP rank its part of a split
one, joined in TP-rank order. The weights written are the model's own (the compute dtype:
under bf16 mixed precision, the bf16 weights, not the fp32 master copies). The tokenizer is
not written: a model fine-tuned from a Hugging Face directory keeps that directory's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.hf_weights import CONFIG, FAMILIES, WEIGHTS, full_shapes, hf_name
from polychip.spec.model import ModelSpec

if TYPE_CHECKING:
    from polychip.runtime.train import Trainer

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64",
                torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config(spec: ModelSpec, dtype: torch.dtype) -> dict[str, object]:
    """The config.json of ``spec`` (read back by :func:`polychip.spec.model.load_model` as
    the same model)."""
    config: dict[str, object] = {
        "architectures": [_ARCHITECTURES[spec.family]], "model_type": spec.family,
        "hidden_size": spec.hidden_size, "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads, "vocab_size": spec.vocab_size,
        "hidden_act": spec.activation, "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta, "tie_word_embeddings": spec.tie_embeddings,
        "torch_dtype": _DTYPE_NAMES[dtype],
    }
    if spec.max_positions:
        config["max_position_embeddings"] = spec.max_positions
    if spec.family == "llama":
        config |= {"attention_bias": False, "mlp_bias": False}
    elif spec.family == "mistral":
        config["sliding_window"] = spec.sliding_window or None
    else:
        config |= {"use_sliding_window": False, "sliding_window": None}
    return config


def _check_exportable(full_state: dict[str, torch.Tensor], spec: ModelSpec) -> None:
    if spec.family not in FAMILIES or spec.rope_scaling or spec.attn_out_bias \
            or spec.mlp_bias or (spec.qkv_bias and spec.family != "qwen2"):
        raise RuntimeSetupError(
            f"model {spec.name!r} ({spec.family}): Hugging Face export writes the runtime's "
            f"Llama, Mistral and Qwen2 blocks only (no rescaled rotary, biases as Qwen2's)")
    shapes = full_shapes(spec)
    got = {n: tuple(t.shape) for n, t in full_state.items()}
    if spec.tie_embeddings:
        got.pop("head.weight", None)  # the embedding's copy, written once
    if got != shapes:
        wrong = sorted(n for n in shapes.keys() | got.keys() if got.get(n) != shapes.get(n))
        raise RuntimeSetupError(
            f"the parameters to export are not the whole model {spec.name!r}: "
            f"{', '.join(f'{n} {got.get(n)} (want {shapes.get(n)})' for n in wrong[:4])}")


def export_hf(full_state: dict[str, torch.Tensor], spec: ModelSpec,
              directory: str | Path) -> Path:
    """Write the whole model (``full_state``: every parameter by our name, full tensors) as
    ``directory``/config.json and model.safetensors; the weights file is written under a
    temporary name and renamed, so a failed export leaves no partial model.safetensors."""
    _check_exportable(full_state, spec)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {hf_name(n): t.detach().cpu().contiguous() for n, t in full_state.items()
               if not (spec.tie_embeddings and n == "head.weight")}
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        raise RuntimeSetupError(f"the parameters to export have several dtypes {dtypes}")
    partial = directory / f".{WEIGHTS}.partial"
    save_file(tensors, str(partial), metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(hf_config(spec, dtypes.pop()), indent=2) + "\n")
    os.replace(partial, directory / WEIGHTS)
    return directory


def check_export_dir(directory: str | Path) -> None:
    """Refuse, before a run, to overwrite a model: ``directory`` must not hold one."""
    target = Path(directory) / WEIGHTS
    if target.exists():
        raise RuntimeSetupError(f"{target} exists: export into another directory, or remove "
                                f"it (polychip does not overwrite a model)")
    if Path(directory).exists() and not Path(directory).is_dir():
        raise RuntimeSetupError(f"{directory} is a file: give a directory to export into")


def _mine(trainer: Trainer) -> list[tuple[str, int, int, torch.Tensor]]:
    """What this rank sends: replica 0's parameters (name, split dim or -1, TP rank,
    tensor), each replicated one from TP rank 0 only."""
    role, model = trainer.role, trainer.model
    if role.replica != 0:
        return []
    out = []
    for name, p in model.named_parameters():
        split = model.split_of(name)
        if split is not None or model.tp.rank == 0:
            out.append((name, -1 if split is None else split.dim, model.tp.rank,
                        p.detach().cpu().clone()))
    return out


def gather_full_state(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """Collective over every rank: rank 0 gets the whole model (full tensors by our names),
    the others None."""
    gathered: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    try:
        dist.gather_object(_mine(trainer), gathered, dst=0)
    except RuntimeError as exc:
        raise trainer.failure(None, "gathering the model for the export", exc) from exc
    if gathered is None:
        return None
    parts: dict[str, list[tuple[int, int, torch.Tensor]]] = {}
    for name, dim, tp_rank, tensor in (item for rank in gathered for item in rank):
        parts.setdefault(name, []).append((tp_rank, dim, tensor))
    return {name: _joined(pieces) for name, pieces in parts.items()}


def _joined(pieces: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
    pieces.sort(key=lambda piece: piece[0])
    dim = pieces[0][1]
    return pieces[0][2] if dim < 0 else torch.cat([t for _, _, t in pieces], dim=dim)


def export_trained(trainer: Trainer, directory: str | Path) -> None:
    """Collective: gather the trained model to rank 0, which writes it to ``directory``."""
    state = gather_full_state(trainer)
    if state is not None:
        export_hf(state, trainer.plan.model, directory)
