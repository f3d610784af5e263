"""Hugging Face interop: tiny Llama, Mistral and Qwen2 models built by `transformers` on random
weights give the same logits in our runtime; any stage split and TP rank loads its part of
them; an export loads back in `transformers` with the same logits; weights of another model
are refused naming the file and the mismatch."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.hf_export import export_hf
from polychip.runtime.hf_weights import hf_name, load_hf_into_stage
from polychip.runtime.model import StageModule, build_full_model, build_stage
from polychip.runtime.tensor_parallel import TensorParallel
from polychip.spec.model import ModelSpec, load_model

SIZES = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2}
FAMILIES = {
    # Llama 3's rotary base; Qwen2's q/k/v biases with a tied head; Mistral with its window
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"rope_theta": 500000.0}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"rope_theta": 1e6, "tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4096}),
}
ATOL = 1e-5  # float32 (measured: equal); a wrong norm epsilon moves the logits by 1e-3


def _randomize(model: torch.nn.Module) -> None:
    """Every parameter random (norms near 1, biases non-zero), so that a swapped or missed
    tensor changes the logits."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1 + noise if "norm" in name else 3 * noise)


def hf_model(family: str, directory: Path, **config: object) -> torch.nn.Module:
    """A random tiny `transformers` model of ``family``, saved to ``directory``."""
    config_cls, model_cls, own = FAMILIES[family]
    cfg = getattr(transformers, config_cls)(**SIZES, rms_norm_eps=1e-6, **own | config)
    model = getattr(transformers, model_cls)(cfg).eval()
    _randomize(model)
    model.save_pretrained(directory)
    return model


def _ids(vocab: int = 96) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_our_model_from_hf_weights_gives_transformers_logits(family: str, tmp_path: Path
                                                             ) -> None:
    theirs = hf_model(family, tmp_path)
    spec = load_model(str(tmp_path))
    ours = build_full_model(spec, seed=7)
    load_hf_into_stage(ours, tmp_path)
    ids = _ids()
    with torch.no_grad():
        want = theirs(ids).logits
        got = ours(ids)
    assert want.abs().max() > 1  # logits of substance
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    # the seeded init alone is another model
    assert (build_full_model(spec, seed=7)(ids) - want).abs().max() > 0.1


def _tp_stages(spec: ModelSpec, vocab_parallel: bool) -> Iterator[StageModule]:
    """Two stages ([0, 1) with the embedding, [1, 4) with the head), each on 2 TP ranks."""
    for start, end in ((0, 1), (1, 4)):
        for rank in range(2):
            tp = TensorParallel(2, rank, vocab_parallel=vocab_parallel)
            yield build_stage(spec, start, end, seed=3, tp=tp)


@pytest.mark.parametrize("vocab_parallel", [False, True])
def test_each_stage_and_tp_rank_loads_its_part(tmp_path: Path, vocab_parallel: bool) -> None:
    """Stages of a 2-stage split on TP 2 (vocabulary-parallel or not), from sharded files:
    each rank's parameters are its part of the full model's, which equal Hugging Face's."""
    theirs = hf_model("qwen2", tmp_path, tie_word_embeddings=False)
    sharded = tmp_path / "sharded"
    theirs.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    spec = load_model(str(tmp_path))
    full = build_full_model(spec)
    load_hf_into_stage(full, tmp_path)
    hf_state = theirs.state_dict()
    for name, p in full.named_parameters():
        torch.testing.assert_close(p, hf_state[hf_name(name)], rtol=0, atol=0)
    seen = set()
    for stage in _tp_stages(spec, vocab_parallel):
        load_hf_into_stage(stage, sharded)
        for name, p in stage.named_parameters():
            want = stage.shard(name, full.get_parameter(name))
            torch.testing.assert_close(p, want, rtol=0, atol=0, msg=name)
            split = stage.split_of(name)
            seen.add((name, split is not None))
    assert ("layers.2.attn.wk.bias", True) in seen
    assert ("head.weight", vocab_parallel) in seen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_an_export_loads_in_transformers_with_the_same_logits(family: str, tmp_path: Path
                                                              ) -> None:
    hf_model(family, tmp_path / "source")
    spec = load_model(str(tmp_path / "source"))
    ours = build_full_model(spec, seed=5)
    _randomize(ours)  # as if trained: no tensor at its initial value
    export_hf(dict(ours.named_parameters()), spec, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids), rtol=0, atol=ATOL)
    # our reader takes the written config.json as the same model
    read = load_model(str(tmp_path / "out"))
    assert dataclasses.replace(read, name=spec.name, max_positions=spec.max_positions) == spec
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not list((tmp_path / "out").glob(".*partial"))


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path: Path) -> None:
    hf_model("qwen2", tmp_path)
    spec = load_model(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    wider = dataclasses.replace(spec, num_kv_heads=4)
    with pytest.raises(RuntimeSetupError, match=r"config.json describes another model.*"
                       r"num_kv_heads: the plan's model has 4, .* says 2"):
        load_hf_into_stage(build_full_model(wider), tmp_path)
    state = load_file(weights)
    key = "model.layers.1.self_attn.k_proj.weight"
    save_file(state | {key: state[key][:4]}, weights)
    with pytest.raises(RuntimeSetupError, match=rf"model.safetensors: tensor {key} has shape "
                       r"\[4, 32\], the plan's model 'test_weights.*' needs \[16, 32\]"):
        load_hf_into_stage(build_full_model(spec), tmp_path)
    del state["model.layers.3.self_attn.q_proj.bias"]
    save_file(state, weights)
    with pytest.raises(RuntimeSetupError, match=r"lacks tensors of the model: "
                       r"model.layers.3.self_attn.q_proj.bias \(1\)"):
        load_hf_into_stage(build_full_model(spec), tmp_path)
    weights.unlink()
    with pytest.raises(RuntimeSetupError, match=r"no model\.safetensors and no"):
        load_hf_into_stage(build_full_model(spec), tmp_path)


def test_rescaled_rotary_frequencies_are_refused(tmp_path: Path) -> None:
    """Llama 3.1's rescaled rotary frequencies: read as such from its config, so weights of
    it are refused for a plan of plain rotary, and such a model is not exported."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_model("llama", tmp_path, rope_scaling=scaling)
    spec = load_model(str(tmp_path))
    assert spec.rope_scaling == "llama3"
    plain = dataclasses.replace(spec, rope_scaling="")
    with pytest.raises(RuntimeSetupError, match=r"rope_scaling: the plan's model has '', .* "
                       r"says 'llama3'"):
        load_hf_into_stage(build_full_model(plain), tmp_path)
    with pytest.raises(RuntimeSetupError, match="no rescaled rotary"):
        export_hf(dict(build_full_model(spec).named_parameters()), spec, tmp_path / "out")
