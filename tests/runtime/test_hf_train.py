"""`polychip train PLAN --init-from HF_DIR --export-hf OUT` as a user runs it: a hybrid plan
(a 2-stage pipeline whose second stage is a TP pair, beside a single-stage replica) starts
from a Qwen2 model's Hugging Face weights, trains, and writes the model back; the export
equals single-process training from the same weights. A plan of another model, or an
export directory that holds a model, is refused before any process starts (exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from polychip.cli.launch import train_args
from polychip.cli.train import add_train_options
from polychip.plan import Plan, save_plan
from polychip.runtime.hf_weights import hf_name
from polychip.runtime.train import TrainConfig
from polychip.spec.model import ModelSpec

from .plans import TINY4, hybrid_plan, with_job
from .reference import single_process

SRC = Path(__file__).resolve().parents[2] / "src"
# TINY4's sizes with Qwen2's block: q/k/v biases, its rotary base and norm epsilon
QWEN2 = dataclasses.replace(TINY4, family="qwen2", qkv_bias=True, rope_theta=1e6,
                            norm_eps=1e-6)


def _qwen2_dir(directory: Path) -> Path:
    config = transformers.Qwen2Config(
        vocab_size=QWEN2.vocab_size, hidden_size=QWEN2.hidden_size,
        intermediate_size=QWEN2.ffn_hidden_size, num_hidden_layers=QWEN2.num_layers,
        num_attention_heads=QWEN2.num_heads, num_key_value_heads=QWEN2.num_kv_heads,
        rms_norm_eps=QWEN2.norm_eps, rope_theta=QWEN2.rope_theta, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)  # biases and norms away from 0 and 1
    model.save_pretrained(directory)
    return directory


def _plan(model: ModelSpec = QWEN2) -> Plan:
    """hybrid_plan with the vocabulary split over the TP pair holding the head."""
    plan = with_job(hybrid_plan(), vocab_parallel=True)
    return dataclasses.replace(plan, model=model)


def _train(tmp_path: Path, plan: Plan, *options: str) -> subprocess.CompletedProcess:
    plan_path = tmp_path / "plan.json"
    save_plan(plan, plan_path)
    return subprocess.run(
        [sys.executable, "-m", "polychip", "train", str(plan_path), "--emulate",
         "--dilation", "3", *options],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=180)


@pytest.mark.dist
def test_train_from_hf_weights_and_export_equals_one_process(tmp_path: Path) -> None:
    source, out = _qwen2_dir(tmp_path / "qwen2"), tmp_path / "out"
    text = tmp_path / "text.txt"
    text.write_bytes(Path(os.__file__).read_bytes()[:20_000])
    config = TrainConfig(steps=2, dtype="float64", lr=0.05, data=str(text),
                         init_from=str(source))
    done = _train(tmp_path, _plan(), "--steps", "2", "--dtype", "float64", "--lr", "0.05",
                  "--data", str(text), "--init-from", str(source), "--export-hf", str(out))
    assert done.returncode == 0, done.stderr + done.stdout
    flat = "".join(done.stdout.split())  # rich folds long lines
    assert "".join(f"in Hugging Face form: {out}".split()) in flat
    exported = load_file(out / "model.safetensors")
    initial = load_file(source / "model.safetensors")
    _, want = single_process(_plan(), config)
    assert set(exported) == {hf_name(n) for n in want}
    for name, value in want.items():
        key = hf_name(name)
        torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-10, msg=key)
        assert not torch.equal(exported[key], initial[key].double()), f"{key} did not train"


def test_a_plan_of_another_model_is_refused_before_any_process(tmp_path: Path) -> None:
    source = _qwen2_dir(tmp_path / "qwen2")
    done = _train(tmp_path, _plan(dataclasses.replace(QWEN2, norm_eps=1e-5)),
                  "--init-from", str(source))
    assert done.returncode == 2, done.stderr + done.stdout
    assert "norm_eps: the plan's model has 1e-05" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_an_export_never_overwrites_a_model(tmp_path: Path) -> None:
    source = _qwen2_dir(tmp_path / "qwen2")
    done = _train(tmp_path, _plan(), "--export-hf", str(source))
    assert done.returncode == 2, done.stderr + done.stdout
    assert "model.safetensors exists" in done.stderr + done.stdout


def test_launch_forwards_the_hugging_face_options() -> None:
    """`polychip launch` gives every node's worker the same --init-from and --export-hf."""
    parser = argparse.ArgumentParser()
    add_train_options(parser)
    args = parser.parse_args(["--init-from", "/models/qwen2", "--export-hf", "out/hf"])
    assert train_args(args, vars(parser.parse_args([]))) == [
        "--init-from", "/models/qwen2", "--export-hf", "out/hf"]
