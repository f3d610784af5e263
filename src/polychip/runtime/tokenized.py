"""Text tokenized by a Hugging Face ``tokenizers`` tokenizer (a ``tokenizer.json``), once,
into a cached token file every rank memory-maps.

:func:`tokenized_source` tokenizes the text the first time (line by line, in batches, without
special tokens: the text is one stream), writes the ids to ``<cache>/<key>.npy`` -- ``uint16``
when the vocabulary fits, else ``uint32`` (Llama 3's 128,256) -- through a temporary file and a
rename, so a reader never sees half a file; later calls (the ranks, a rerun) map the cached
file. The key hashes the tokenizer file's bytes and the text file's path, size and modification
time: editing either re-tokenizes. ``polychip train`` calls it before any process starts, so
the ranks only read the cache. The cache folder is ``$POLYCHIP_CACHE/tokens`` (default
``~/.cache/polychip/tokens``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from polychip.runtime.errors import RuntimeSetupError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

LINES_PER_BATCH = 4096


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


def _cache_key(text: Path, tokenizer_path: Path) -> str:
    stat = text.stat()
    digest = hashlib.sha256(tokenizer_path.read_bytes())
    digest.update(f"\0{text.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _tokenize(text: Path, tokenizer: Tokenizer, dtype: type[np.unsignedinteger]) -> np.ndarray:
    lines = text.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    chunks = []
    for i in range(0, len(lines), LINES_PER_BATCH):
        batch = tokenizer.encode_batch(lines[i:i + LINES_PER_BATCH], add_special_tokens=False)
        chunks += [np.asarray(e.ids, dtype=dtype) for e in batch]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)


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
    ids = _tokenize(source, tokenizer, np.uint16 if vocab <= 1 << 16 else np.uint32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
    np.save(partial, ids)
    partial.replace(path)
    return path, vocab


class TokenizedText:
    """A text file's tokens (a :class:`~polychip.runtime.data.TokenSource`), tokenized once
    and cached (:func:`tokenize_cached`), memory-mapped."""

    def __init__(self, text: str | os.PathLike[str], tokenizer: str | os.PathLike[str],
                 model_vocab_size: int) -> None:
        self.path, self._vocab_size = tokenize_cached(text, tokenizer, model_vocab_size)
        self._data = np.load(self.path, mmap_mode="r")

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def num_tokens(self) -> int:
        return len(self._data)

    def slice(self, start: int, length: int) -> np.ndarray:
        return np.asarray(self._data[start:start + length], dtype=np.int64)
