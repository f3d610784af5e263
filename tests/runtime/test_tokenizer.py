"""Text tokenized by a Hugging Face `tokenizers` tokenizer: once, cached, uint16 or uint32 by
the vocabulary; a tokenizer larger than the model or a missing file refused before anything
starts; `polychip train --tokenizer` end to end with the schedule and clipping options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polychip.cli import main
from polychip.plan import save_plan
from polychip.runtime.data import open_source
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.tokenized import TokenizedText

from .plans import cpu_test_plan

tokenizers = pytest.importorskip("tokenizers")

LINES = ["the quick brown fox jumps over the lazy dog\n", "a lazy dog sleeps all day\n",
         "the fox is quick and the dog is lazy\n"] * 20


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYCHIP_CACHE", str(tmp_path / "cache"))


def _bpe(tmp_path: Path, vocab_size: int = 100) -> Path:
    """A byte-level BPE tokenizer trained on LINES (at most ``vocab_size`` tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(LINES, trainers.BpeTrainer(vocab_size=vocab_size))
    path = tmp_path / "bpe.json"
    tok.save(str(path))
    return path


def _word_level(tmp_path: Path, size: int) -> Path:
    """A word-level tokenizer of ``size`` words w0 .. w<size-1>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / f"words{size}.json"
    tok.save(str(path))
    return path


def _text(tmp_path: Path, lines: list[str] = LINES) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("".join(lines))
    return path


def test_text_is_tokenized_once_and_read_back_from_the_cache(tmp_path: Path) -> None:
    tok_path, text = _bpe(tmp_path), _text(tmp_path)
    tok = tokenizers.Tokenizer.from_file(str(tok_path))
    source = open_source(text, 256, tokenizer=tok_path)
    want = [i for line in LINES for i in tok.encode(line, add_special_tokens=False).ids]
    assert source.num_tokens == len(want) < len("".join(LINES)) / 2  # merges happened
    assert source.slice(0, len(want)).tolist() == want
    assert source.vocab_size == tok.get_vocab_size() <= 100
    assert isinstance(source, TokenizedText) and np.load(source.path).dtype == np.uint16
    stamp = source.path.stat().st_mtime_ns
    again = TokenizedText(text, tok_path, 256)
    assert again.path == source.path and again.path.stat().st_mtime_ns == stamp  # cached
    text.write_text("".join(LINES[:5]))  # edited: tokenized anew
    assert TokenizedText(text, tok_path, 256).path != source.path


def test_a_vocabulary_beyond_65535_is_stored_as_uint32(tmp_path: Path) -> None:
    tok_path = _word_level(tmp_path, 70_000)
    text = _text(tmp_path, ["w69999 w5 w65536\n", "w1 w2\n"])
    source = TokenizedText(text, tok_path, 128_256)
    assert np.load(source.path).dtype == np.uint32
    assert source.slice(0, 5).tolist() == [69999, 5, 65536, 1, 2]


def test_a_tokenizer_larger_than_the_model_or_missing_files_are_refused(
        tmp_path: Path) -> None:
    text = _text(tmp_path)
    with pytest.raises(RuntimeSetupError, match=r"vocabulary of 300 tokens.*vocab_size is 256"):
        open_source(text, 256, tokenizer=_word_level(tmp_path, 300))
    with pytest.raises(RuntimeSetupError, match=r"nope\.json does not exist"):
        open_source(text, 256, tokenizer=tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RuntimeSetupError, match="could not be read as a Hugging Face"):
        open_source(text, 256, tokenizer=tmp_path / "bad.json")
    with pytest.raises(RuntimeSetupError, match=r"missing\.txt does not exist"):
        open_source(tmp_path / "missing.txt", 256, tokenizer=_bpe(tmp_path))
    with pytest.raises(RuntimeSetupError, match="without a text file"):
        open_source(None, 256, tokenizer=_bpe(tmp_path))


def test_train_command_refuses_them_before_any_process_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path, text = tmp_path / "plan.json", _text(tmp_path)
    save_plan(cpu_test_plan(), plan_path)
    big = _word_level(tmp_path, 300)
    assert main(["train", str(plan_path), "--data", str(text), "--tokenizer", str(big)]) == 2
    err = capsys.readouterr().err
    assert "300" in err and "256" in err
    assert main(["train", str(plan_path), "--data", str(text), "--tokenizer",
                 str(tmp_path / "gone.json")]) == 2
    assert "gone.json does not exist" in capsys.readouterr().err
    assert main(["train", str(plan_path), "--clip-grad-norm", "-1"]) == 2
    assert "clip_grad_norm=-1" in capsys.readouterr().err


@pytest.mark.dist
def test_train_command_with_a_tokenizer_a_schedule_and_clipping(tmp_path: Path) -> None:
    plan_path, metrics = tmp_path / "plan.json", tmp_path / "metrics.jsonl"
    save_plan(cpu_test_plan((2, 2, 4, 4), micro_batch=2), plan_path)
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "polychip", "train", str(plan_path), "--steps", "3", "--emulate",
         "--data", str(_text(tmp_path)), "--tokenizer", str(_bpe(tmp_path)),
         "--lr", "0.01", "--lr-schedule", "cosine", "--warmup-steps", "1", "--min-lr", "0.001",
         "--clip-grad-norm", "0.01", "--weight-decay", "0.05", "--metrics", str(metrics),
         "--dilation", "3"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(src), "POLYCHIP_CACHE": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr + done.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert {r["lr"] for r in records if r["step"] == 0} == {0.01}
    assert [r["lr"] for r in records if r["step"] == 2] == pytest.approx([0.0055] * 4)
    norms = {r["step"]: r["grad_norm"] for r in records}
    assert all(norms[s] > 0.01 for s in range(3))  # it clipped every step
    assert len({(r["step"], r["grad_norm"]) for r in records}) == 3  # one norm for all ranks
    assert len(list((tmp_path / "c" / "tokens").glob("*.npy"))) == 1  # tokenized once
