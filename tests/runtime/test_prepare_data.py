"""`polychip prepare-data`: text and JSON lines into one token file (uint16, or uint32 when the
vocabulary needs it) that `polychip train --data` reads as it is: the same tokens as
tokenizing directly, the end-of-text token after each document, and bad input refused with
exit 2 and a message naming the file (and line)."""

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
from polychip.runtime.data import SampleStream, TokenFileSource, open_source
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.prepare_data import prepare_data
from polychip.runtime.token_file import TokenFileWriter, read_tokens

from .plans import cpu_test_plan
from .test_tokenizer import LINES, _bpe, _text, _word_level

tokenizers = pytest.importorskip("tokenizers")

DOCS = ["the quick brown fox\njumps over the lazy dog", "a lazy dog", "sleeps all day\n"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYCHIP_CACHE", str(tmp_path / "cache"))


def _bpe_with_eos(tmp_path: Path) -> Path:
    """The test BPE with GPT-2's end-of-text token added (a special token)."""
    tok = tokenizers.Tokenizer.from_file(str(_bpe(tmp_path)))
    tok.add_special_tokens(["<|endoftext|>"])
    path = tmp_path / "bpe-eos.json"
    tok.save(str(path))
    return path


def _ids(tok_path: Path, text: str) -> list[int]:
    tok = tokenizers.Tokenizer.from_file(str(tok_path))
    return tok.encode(text, add_special_tokens=False).ids


def test_text_file_round_trip_equals_direct_tokenizing_and_the_train_cache(
        tmp_path: Path) -> None:
    tok_path, text = _bpe_with_eos(tmp_path), _text(tmp_path)
    eos = tokenizers.Tokenizer.from_file(str(tok_path)).token_to_id("<|endoftext|>")
    out = tmp_path / "tokens.npy"
    assert main(["prepare-data", str(text), "--tokenizer", str(tok_path), "--out", str(out)]) == 0
    want = [i for line in LINES for i in _ids(tok_path, line)]
    source = open_source(out, 256)  # what `polychip train --data tokens.npy` reads
    assert isinstance(source, TokenFileSource) and source.num_tokens == len(want) + 1
    assert source.slice(0, len(want) + 1).tolist() == [*want, eos]
    assert np.load(out).dtype == np.uint16
    # the same tokens as `polychip train --data text.txt --tokenizer` (its cache), + the EOS
    cached = open_source(text, 256, tokenizer=tok_path)
    assert cached.slice(0, cached.num_tokens).tolist() == want
    x, y = SampleStream(source, seq_len=8).sample(0, 0)
    assert np.array_equal(x[1:], y[:-1])


def test_jsonl_documents_each_end_with_eos_and_files_concatenate(tmp_path: Path) -> None:
    tok_path = _bpe_with_eos(tmp_path)
    eos = tokenizers.Tokenizer.from_file(str(tok_path)).token_to_id("<|endoftext|>")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS))
                     + "\n\n")  # a trailing blank line is skipped
    seen: list[tuple[int, int]] = []
    done = prepare_data([jsonl], tok_path, tmp_path / "a.npy", field="body",
                        progress=lambda b, d: seen.append((b, d)))
    want = [i for d in DOCS for i in [*_ids(tok_path, d), eos]]
    assert read_tokens(done.path).tolist() == want
    assert done.num_documents == 3 and done.eos == ("<|endoftext|>", eos)
    assert sum(b for b, _ in seen) == jsonl.stat().st_size and sum(d for _, d in seen) == 3
    # two inputs together = each alone, concatenated (a text file is one document)
    text = _text(tmp_path, LINES[:3])
    both = prepare_data([jsonl, text], tok_path, tmp_path / "b.npy", field="body")
    alone = prepare_data([text], tok_path, tmp_path / "c.npy")
    assert read_tokens(both.path).tolist() == want + read_tokens(alone.path).tolist()
    assert both.num_documents == 4
    plain = prepare_data([jsonl], tok_path, tmp_path / "d.npy", field="body", use_eos=False)
    assert eos not in read_tokens(plain.path).tolist() and plain.eos is None


def test_a_vocabulary_beyond_65535_is_written_as_uint32(tmp_path: Path) -> None:
    tok_path = _word_level(tmp_path, 70_000)
    text = _text(tmp_path, ["w69999 w5 w65536\n", "w1 w2\n"])
    done = prepare_data([text], tok_path, tmp_path / "big.npy")
    assert done.dtype == "uint32" and done.eos is None  # a word list has no end-of-text
    assert np.load(done.path).dtype == np.uint32
    source = open_source(done.path, 128_256)
    assert source.slice(0, 5).tolist() == [69999, 5, 65536, 1, 2]
    with pytest.raises(RuntimeSetupError, match=r"token id 69999.*vocab_size is 32000"):
        open_source(done.path, 32_000)  # a model too small for the data


def test_the_writer_streams_and_leaves_nothing_when_it_fails(tmp_path: Path) -> None:
    out = tmp_path / "t.npy"
    with TokenFileWriter(out, np.dtype("<u2")) as writer:
        for start in range(0, 30_000, 1000):
            writer.write(np.arange(start, start + 1000))
    assert np.array_equal(np.load(out), np.arange(30_000))
    with pytest.raises(ValueError, match="boom"), TokenFileWriter(out, np.dtype("<u4")) as w:
        w.write([1, 2, 3])
        raise ValueError("boom")
    assert np.load(out).dtype == np.uint16  # the earlier file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npy"]  # no partial file left


def _exit_2(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["prepare-data", *argv]) == 2
    return capsys.readouterr().err


def test_bad_input_exits_2_naming_what_is_wrong(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    tok, out = str(_bpe(tmp_path)), str(tmp_path / "out.npy")
    text = str(_text(tmp_path))
    assert "missing.txt does not exist" in _exit_2(
        capsys, str(tmp_path / "missing.txt"), "--tokenizer", tok, "--out", out)
    assert "is a directory" in _exit_2(capsys, str(tmp_path), "--tokenizer", tok, "--out", out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    err = _exit_2(capsys, str(bad), "--tokenizer", tok, "--out", out)
    assert "bad.jsonl:2: no 'text' field (found: 'body')" in err and "--field" in err
    bad.write_text('{"text": "fine"}\n{"text": 3}\nnot json\n')
    assert "bad.jsonl:2: 'text' holds a int" in _exit_2(capsys, str(bad), "--tokenizer", tok,
                                                       "--out", out)
    bad.write_text("not json\n")
    assert "bad.jsonl:1: not a JSON line" in _exit_2(capsys, str(bad), "--tokenizer", tok,
                                                    "--out", out)
    broken = tmp_path / "broken.json"
    broken.write_text("{not a tokenizer")
    assert "could not be read as a Hugging Face" in _exit_2(
        capsys, text, "--tokenizer", str(broken), "--out", out)
    assert "gone.json does not exist" in _exit_2(
        capsys, text, "--tokenizer", str(tmp_path / "gone.json"), "--out", out)
    assert "name it out.npy" in _exit_2(capsys, text, "--tokenizer", tok,
                                        "--out", str(tmp_path / "out.bin"))
    assert "no such token" in _exit_2(capsys, text, "--tokenizer", tok, "--out", out,
                                      "--eos", "<nope>")
    assert not Path(out).exists() and not list(tmp_path.glob(".out.npy.*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    text = _text(tmp_path)
    text.chmod(0)
    err = _exit_2(capsys, str(text), "--tokenizer", str(_bpe(tmp_path)),
                  "--out", str(tmp_path / "o.npy"))
    assert "cannot be read" in err


def test_train_reads_the_token_file_and_refuses_it_with_a_tokenizer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok_path = _bpe(tmp_path)
    done = prepare_data([_text(tmp_path)], tok_path, tmp_path / "tokens.npy")
    plan_path = tmp_path / "plan.json"
    save_plan(cpu_test_plan(), plan_path)
    assert main(["train", str(plan_path), "--data", str(done.path), "--tokenizer",
                 str(tok_path)]) == 2
    assert "already tokenized" in capsys.readouterr().err
    wrong = tmp_path / "matrix.npy"
    np.save(wrong, np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(RuntimeSetupError, match=r"one flat uint16 or uint32 array"):
        open_source(wrong, 256)


def test_an_input_that_cannot_be_read_exits_2_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As root (CI containers) a file's mode does not stop reading: the access check is
    exercised by denying it."""
    text, out = _text(tmp_path), tmp_path / "o.npy"
    monkeypatch.setattr("polychip.runtime.prepare_data.os.access",
                        lambda path, mode: Path(path) != text)
    err = _exit_2(capsys, str(text), "--tokenizer", str(_bpe(tmp_path)), "--out", str(out))
    assert f"input {text} cannot be read" in err and not out.exists()


@pytest.mark.dist
def test_train_command_on_a_prepared_token_file(tmp_path: Path) -> None:
    tok_path = _bpe_with_eos(tmp_path)
    done = prepare_data([_text(tmp_path)], tok_path, tmp_path / "tokens.npy")
    plan_path, metrics = tmp_path / "plan.json", tmp_path / "metrics.jsonl"
    save_plan(cpu_test_plan(), plan_path)
    src = Path(__file__).resolve().parents[2] / "src"
    run = subprocess.run(
        [sys.executable, "-m", "polychip", "train", str(plan_path), "--steps", "2", "--emulate",
         "--dilation", "3", "--data", str(done.path), "--metrics", str(metrics)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(src)})
    assert run.returncode == 0, run.stderr + run.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert {r["step"] for r in records} == {0, 1}
    assert all(r["tokens"] > 0 for r in records)
