"""Hugging Face safetensors weights of the Llama, Mistral and Qwen2 families, loaded into any
stage of any plan (its layers, its TP part).

A Hugging Face model directory holds ``config.json`` and ``model.safetensors``, or shards
``model-*.safetensors`` listed by ``model.safetensors.index.json``. Our parameter names are
global (:mod:`polychip.runtime.model`), so each maps to one Hugging Face tensor whatever the
stage split: ``embed.weight`` <-> ``model.embed_tokens.weight``, ``layers.N.attn.wq.weight``
<-> ``model.layers.N.self_attn.q_proj.weight`` (and k, v, o, the q/k/v biases), the norms,
the MLP's gate/up/down, ``final_norm.weight`` <-> ``model.norm.weight``, ``head.weight`` <->
``lm_head.weight`` (a tied head: the embedding). Our rotary embedding rotates halves, as
Hugging Face's Llama does, so q and k map without a permutation.

Before a weight is read, the directory is checked against the model: its config.json must
describe the same model (:func:`hf_mismatches`), and its tensors must be exactly the
model's names and shapes. A stage then reads only its own tensors, and of a split one only
its TP rank's rows or columns (``get_slice``). Writing a model back: :mod:`.hf_export`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.model import StageModule
from polychip.spec.hf_config import model_from_hf_config
from polychip.spec.model import ModelSpec

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
FAMILIES = ("llama", "mistral", "qwen2")
_BLOCK = {  # ours after "layers.N." -> Hugging Face's after "model.layers.N."
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "attn.wq.bias": "self_attn.q_proj.bias",
    "attn.wk.bias": "self_attn.k_proj.bias",
    "attn.wv.bias": "self_attn.v_proj.bias",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_ENDS = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
         "head.weight": "lm_head.weight"}
# in some checkpoints, never read: the rotary tables (recomputed), a tied head's copy
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# compared with the plan's model; the others decide no weight and no arithmetic
_UNCOMPARED = {"name", "max_positions"}


def hf_name(name: str) -> str:
    """The Hugging Face name of our parameter ``name`` (global layer index)."""
    if name in _ENDS:
        return _ENDS[name]
    layer, _, rest = name.removeprefix("layers.").partition(".")
    return f"model.layers.{layer}.{_BLOCK[rest]}"


def full_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter of the whole model (a tied head: only ``embed.weight``), by our name,
    with its full (TP 1) shape; built on the meta device, nothing allocated."""
    with torch.device("meta"):
        model = StageModule(spec, 0, spec.num_layers, True, True)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def hf_mismatches(spec: ModelSpec, config_path: Path) -> list[str]:
    """How the model of a Hugging Face config.json differs from ``spec`` (empty: the same
    model), one line per field, each saying both values."""
    theirs = model_from_hf_config(config_path)  # a SpecError names the file and key
    return [f"{f.name}: the plan's model has {getattr(spec, f.name)!r}, {config_path} "
            f"says {getattr(theirs, f.name)!r}"
            for f in fields(ModelSpec) if f.name not in _UNCOMPARED
            and getattr(spec, f.name) != getattr(theirs, f.name)]


def _weight_files(directory: Path) -> dict[str, Path]:
    """Each tensor's name -> the safetensors file holding it."""
    index, single = directory / INDEX, directory / WEIGHTS
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeSetupError(f"{index}: not a safetensors index with a 'weight_map' "
                                    f"({exc}); give the directory save_pretrained wrote") from None
        return {key: directory / file for key, file in weight_map.items()}
    if single.is_file():
        with _open(single) as f:
            return dict.fromkeys(f.keys(), single)
    raise RuntimeSetupError(
        f"{directory}: no {WEIGHTS} and no {INDEX}; polychip reads Hugging Face weights in "
        f"safetensors form (convert a .bin checkpoint with save_pretrained(..., "
        f"safe_serialization=True))")


def _open(path: Path) -> Any:  # safetensors' handle has no public type
    try:
        return safe_open(str(path), framework="pt")
    except (OSError, SafetensorError) as exc:
        raise RuntimeSetupError(f"{path}: cannot read it as safetensors ({exc})") from None


def _check_tensors(spec: ModelSpec, files: dict[str, Path], directory: Path) -> None:
    """The directory holds exactly the model's tensors, each of the model's full shape."""
    expected = {hf_name(n): shape for n, shape in full_shapes(spec).items()}
    extra = sorted(k for k in files if k not in expected and not k.endswith(_IGNORED_SUFFIXES)
                   and not (spec.tie_embeddings and k == _ENDS["head.weight"]))
    missing = sorted(k for k in expected if k not in files)
    for what, keys in (("holds tensors the model does not have", extra),
                       ("lacks tensors of the model", missing)):
        if keys:
            raise RuntimeSetupError(
                f"{directory}: {what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} "
                f"({len(keys)}); the weights are of another model than the plan's "
                f"{spec.name!r} (biases, tied embeddings, layer count?)")
    for path in sorted(set(files.values())):
        with _open(path) as f:
            for key in f.keys():  # noqa: SIM118 -- a safetensors handle, not a dict
                want = expected.get(key)
                got = tuple(f.get_slice(key).get_shape())
                if want is not None and got != want:
                    raise RuntimeSetupError(
                        f"{path}: tensor {key} has shape {list(got)}, the plan's model "
                        f"{spec.name!r} needs {list(want)}; use the weights of this model")


def check_hf_weights(spec: ModelSpec, directory: str | Path) -> dict[str, Path]:
    """Refuse a directory whose config.json or tensors are not of model ``spec`` (each
    error names the file and the mismatch); reads headers only. Each tensor's file."""
    directory = Path(directory)
    if spec.family not in FAMILIES:
        raise RuntimeSetupError(f"model family {spec.family!r}: Hugging Face weights are "
                                f"read for {', '.join(FAMILIES)} only")
    if not (directory / CONFIG).is_file():
        raise RuntimeSetupError(f"{directory}: no {CONFIG}; give a Hugging Face model "
                                f"directory (config.json and safetensors weights)")
    problems = hf_mismatches(spec, directory / CONFIG)
    if problems:
        raise RuntimeSetupError(f"{directory / CONFIG} describes another model than the "
                                f"plan's: {'; '.join(problems)}; plan the model of this "
                                f"config.json (polychip plan --model {directory})")
    files = _weight_files(directory)
    _check_tensors(spec, files, directory)
    return files


@torch.no_grad()
def load_hf_into_stage(stage: StageModule, directory: str | Path) -> None:
    """Fill every parameter of ``stage`` from a Hugging Face model directory: this stage's
    layers only, and of a TP-split tensor only this rank's part (cast to the parameter's
    dtype and device)."""
    spec = stage.spec
    files = check_hf_weights(spec, directory)
    wanted: dict[Path, list[tuple[str, str]]] = {}
    for name, _ in stage.named_parameters():
        key = _ENDS["embed.weight"] if (spec.tie_embeddings and name == "head.weight") \
            else hf_name(name)
        wanted.setdefault(files[key], []).append((name, key))
    for path, names in wanted.items():
        with _open(path) as f:
            for name, key in names:
                stage.get_parameter(name).copy_(_local_part(stage, name, f.get_slice(key)))


def _local_part(stage: StageModule, name: str, tensor_slice: Any) -> torch.Tensor:
    split = stage.split_of(name)
    if split is None:
        return tensor_slice[:]
    start, end = split.bounds(stage.tp.rank, stage.tp.size)
    return tensor_slice[start:end] if split.dim == 0 else tensor_slice[:, start:end]
