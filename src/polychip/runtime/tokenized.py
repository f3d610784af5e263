"""Tokenizing with a Hugging Face ``tokenizers`` tokenizer (a ``tokenizer.json``): the one home
of it (:func:`load_tokenizer`, :func:`text_batches`, :func:`encode`, :func:`separator`), used by
``polychip train --tokenizer`` (here) and ``polychip prepare-data``
(:mod:`polychip.runtime.prepare_data`).

:func:`tokenize_cached` tokenizes a text file the first time (line by line, in batches, without
special tokens: the text is one stream, streamed from the disk), into the token file
``<cache>/<key>.npy`` (:mod:`polychip.runtime.token_file`: ``uint16`` when the vocabulary fits,
else ``uint32`` -- Llama 3's 128,256 -- written under a temporary name and renamed, so a reader
never sees half a file); later calls (the ranks, a rerun) map the cached file. The key hashes
the tokenizer file's bytes and the text file's path, size and modification time: editing
either re-tokenizes. ``polychip train`` calls it before any process starts, so
the ranks only read the cache. The cache folder is ``$POLYCHIP_CACHE/tokens`` (default
``~/.cache/polychip/tokens``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.token_file import TokenArray, TokenFileWriter, read_tokens, token_dtype

if TYPE_CHECKING:
    from tokenizers import Tokenizer

LINES_PER_BATCH = 4096
BATCH_BYTES = 4 << 20  # a batch of lines ends after this many bytes, or LINES_PER_BATCH lines
# Document separators, by name, in the order looked for: GPT-2 / Qwen2, Llama 3, Llama 2 /
# Mistral (SentencePiece's end of sequence), Gemma.
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
_CACHE_FORMAT = "v2"  # bump when the cached tokens of the same inputs would change


def cache_dir() -> Path:
    root = os.environ.get("POLYCHIP_CACHE") or Path.home() / ".cache" / "polychip"
    return Path(root) / "tokens"


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``, or a clear error."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise RuntimeSetupError(
            "--tokenizer needs the `tokenizers` package: pip install 'polychip[runtime]' "
            "(or pip install tokenizers)") from exc
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise RuntimeSetupError(f"tokenizer {p} {what}: give the path of a tokenizer.json "
                                f"(Hugging Face tokenizers)")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeSetupError(
            f"tokenizer {p} could not be read as a Hugging Face tokenizer.json ({first}): "
            f"save one with Tokenizer.save() or tokenizer.save_pretrained()") from exc


def tokenizer_vocab_size(tokenizer: Tokenizer) -> int:
    """Token ids the tokenizer may produce: its vocabulary with the added tokens."""
    return int(tokenizer.get_vocab_size(with_added_tokens=True))


def separator(tokenizer: Tokenizer, name: str | None = None) -> tuple[str, int] | None:
    """The end-of-document token put after each document: ``name`` (which the vocabulary must
    hold), else the first of :data:`EOS_NAMES` it holds; None when it holds none."""
    if name is not None:
        token_id = tokenizer.token_to_id(name)
        if token_id is None:
            raise RuntimeSetupError(f"--eos {name!r}: the tokenizer has no such token; give "
                                    f"one of its special tokens, or --no-eos")
        return name, int(token_id)
    for candidate in EOS_NAMES:
        token_id = tokenizer.token_to_id(candidate)
        if token_id is not None:
            return candidate, int(token_id)
    return None


def text_batches(path: Path) -> Iterator[tuple[list[str], int]]:
    """A text file's lines (line ends kept, undecodable bytes replaced), in batches of at most
    :data:`LINES_PER_BATCH` lines or about :data:`BATCH_BYTES`, each with the bytes it took;
    streamed, never the whole file in memory."""
    try:
        with open(path, "rb") as f:
            lines: list[str] = []
            size = 0
            for raw in f:
                lines.append(raw.decode("utf-8", errors="replace"))
                size += len(raw)
                if len(lines) >= LINES_PER_BATCH or size >= BATCH_BYTES:
                    yield lines, size
                    lines, size = [], 0
            if lines:
                yield lines, size
    except OSError as exc:
        raise RuntimeSetupError(f"cannot read {path}: {exc.strerror or exc}") from exc


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text's ids, without special tokens (the tokenizer's own threads, one batch)."""
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def joined(pieces: Sequence[Sequence[int]], after_each: int | None = None) -> np.ndarray:
    """The pieces' ids one after the other (``after_each`` after every piece, when given)."""
    tail = () if after_each is None else (after_each,)
    return np.fromiter(itertools.chain.from_iterable(itertools.chain(p, tail) for p in pieces),
                       dtype=np.int64)


def _cache_key(text: Path, tokenizer_path: Path) -> str:
    stat = text.stat()
    digest = hashlib.sha256(tokenizer_path.read_bytes())
    digest.update(f"\0{text.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    digest.update(f"\0{_CACHE_FORMAT}".encode())
    return digest.hexdigest()[:20]


def tokenize_cached(text: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str],
                    model_vocab_size: int) -> tuple[Path, int]:
    """The cached token file of ``text`` under the tokenizer (made if missing), and the
    tokenizer's vocabulary size. Refuses a tokenizer whose vocabulary exceeds the model's,
    before tokenizing."""
    tokenizer = load_tokenizer(tokenizer_path)
    vocab = tokenizer_vocab_size(tokenizer)
    if vocab > model_vocab_size:
        raise RuntimeSetupError(
            f"tokenizer {tokenizer_path} has a vocabulary of {vocab} tokens, the model's "
            f"vocab_size is {model_vocab_size}: use a model with vocab_size >= {vocab}, or a "
            f"smaller tokenizer")
    source = Path(text)
    if not source.is_file() or source.stat().st_size == 0:
        what = "is empty" if source.is_file() else "does not exist"
        raise RuntimeSetupError(f"data file {source} {what}: give a text file to tokenize")
    path = cache_dir() / f"{_cache_key(source, Path(tokenizer_path))}.npy"
    if path.is_file():
        return path, vocab
    with TokenFileWriter(path, token_dtype(vocab)) as out:
        for lines, _ in text_batches(source):
            out.write(joined(encode(tokenizer, lines)))
    return path, vocab


class TokenizedText(TokenArray):
    """A text file's tokens (a :class:`~polychip.runtime.data.TokenSource`), tokenized once
    and cached (:func:`tokenize_cached`), memory-mapped."""

    def __init__(self, text: str | os.PathLike[str], tokenizer: str | os.PathLike[str],
                 model_vocab_size: int) -> None:
        self.path, self._vocab_size = tokenize_cached(text, tokenizer, model_vocab_size)
        self._data = read_tokens(self.path)
