"""Deterministic token data: where tokens come from, and which sample each rank reads.

A *source* is a flat array of token ids (:class:`TokenSource`). A :class:`SampleStream` cuts
samples of ``seq_len + 1`` tokens from it: sample ``i`` of step ``t`` starts at a pseudo-random
offset drawn from ``np.random.default_rng([seed, t, i])``. Samples are named by their *global*
index in the step's batch, so however the batch is split over replicas (evenly or not) the
step reads the same samples, and a resumed run continues exactly. A replica reads the
contiguous index range :func:`share_range` gives it.

Sources: the running interpreter's standard-library ``.py`` files as bytes (the default corpus,
present on every machine with Python), a user's text file (bytes, or tokenized by a Hugging
Face tokenizer: :mod:`polychip.runtime.tokenized`), a token file (``.npy`` of uint16 or uint32
ids, written by ``polychip prepare-data``, or a headerless uint16 ``.bin``:
:mod:`polychip.runtime.token_file`).
"""

from __future__ import annotations

import functools
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.token_file import TokenArray, is_token_file, read_tokens

BYTE_VOCAB_SIZE = 256
DEFAULT_CORPUS_MAX_BYTES = 8 * 1024 * 1024
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


class TokenSource(Protocol):
    """A flat, read-only sequence of token ids."""

    @property
    def num_tokens(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def slice(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64."""
        ...


class StdlibCorpus:
    """The Python standard library's own ``.py`` sources, sorted by relative path and
    concatenated as bytes (vocab 256), capped at ``max_bytes``. Read on first use, cached."""

    def __init__(self, max_bytes: int = DEFAULT_CORPUS_MAX_BYTES,
                 root: str | os.PathLike[str] | None = None) -> None:
        if max_bytes < 1:
            raise RuntimeSetupError(f"max_bytes={max_bytes}: the corpus cap must be >= 1 byte")
        self.root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
        self.max_bytes = max_bytes

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    @property
    def num_tokens(self) -> int:
        return len(self._bytes())

    def slice(self, start: int, length: int) -> np.ndarray:
        return self._bytes()[start:start + length].astype(np.int64)

    def _bytes(self) -> np.ndarray:
        data = _read_stdlib(str(self.root), self.max_bytes)
        if len(data) == 0:
            raise RuntimeSetupError(
                f"no .py files found under {self.root}: the default corpus is the standard "
                f"library's sources; point the data at a text or token file instead")
        return data


@functools.lru_cache(maxsize=4)
def _read_stdlib(root: str, max_bytes: int) -> np.ndarray:
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        paths += [Path(folder, f) for f in files if f.endswith(".py")]
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    chunks, total = [], 0
    for path in paths:
        if total >= max_bytes:
            break
        chunk = path.read_bytes()[:max_bytes - total]
        chunks.append(chunk)
        total += len(chunk)
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    data.flags.writeable = False
    return data


class TextFileSource(TokenArray):
    """A user's text file, read as bytes (vocab 256), memory-mapped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _existing_nonempty_file(path, "text")
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._vocab_size = BYTE_VOCAB_SIZE


class TokenFileSource(TokenArray):
    """A token file (:mod:`polychip.runtime.token_file`: a ``.npy`` of uint16 or uint32 ids, or
    a headerless uint16 ``.bin``), memory-mapped. Every id must be below the model's
    ``vocab_size`` (checked once, when opened)."""

    _CHECK_CHUNK_TOKENS = 1 << 24

    def __init__(self, path: str | os.PathLike[str], vocab_size: int) -> None:
        self.path = _existing_nonempty_file(path, "token")
        self._data = read_tokens(self.path)
        self._vocab_size = vocab_size
        max_token = max((int(self._data[i:i + self._CHECK_CHUNK_TOKENS].max())
                         for i in range(0, len(self._data), self._CHECK_CHUNK_TOKENS)),
                        default=-1)
        if max_token >= vocab_size:
            raise RuntimeSetupError(
                f"{self.path} holds token id {max_token}, but the model's vocab_size is "
                f"{vocab_size}: every id must be < vocab_size; use the model the data was "
                f"tokenized for, or raise its vocab_size")


def _existing_nonempty_file(path: str | os.PathLike[str], kind: str) -> Path:
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise RuntimeSetupError(f"data path {p} {what}: give the path of a {kind} file")
    if p.stat().st_size == 0:
        raise RuntimeSetupError(f"data file {p} is empty: give a {kind} file with data in it")
    return p


def open_source(path: str | os.PathLike[str] | None = None, vocab_size: int | None = None,
                max_corpus_bytes: int = DEFAULT_CORPUS_MAX_BYTES, *,
                tokenizer: str | os.PathLike[str] | None = None) -> TokenSource:
    """No path: the standard-library corpus. ``*.npy`` (``polychip prepare-data``) or ``*.bin``
    (uint16): a token file (needs the model's ``vocab_size``). With a ``tokenizer`` (a
    tokenizer.json): a text file it tokenizes (:mod:`polychip.runtime.tokenized`). Anything
    else: a text file read as bytes."""
    if path is not None and is_token_file(path):
        if tokenizer is not None:
            raise RuntimeSetupError(
                f"{path} is a token file, already tokenized, and --tokenizer {tokenizer} was "
                f"given too: drop --tokenizer (it tokenizes text files)")
        if vocab_size is None:
            raise RuntimeSetupError(
                f"{path} is a token file but no vocab_size was given; pass the model's "
                f"vocab_size so that token ids can be checked")
        return TokenFileSource(path, vocab_size)
    if tokenizer is not None:
        if path is None or vocab_size is None:
            raise RuntimeSetupError(
                f"tokenizer {tokenizer} given without a text file (and the model's "
                f"vocab_size): pass --data TEXT with --tokenizer")
        from polychip.runtime.tokenized import TokenizedText

        return TokenizedText(path, tokenizer, vocab_size)
    if path is None:
        return StdlibCorpus(max_corpus_bytes)
    return TextFileSource(path)


class SampleStream:
    """Samples of ``seq_len`` inputs and ``seq_len`` targets (the inputs shifted by one), each
    a deterministic function of (seed, step, global sample index)."""

    def __init__(self, source: TokenSource, seq_len: int, seed: int = 0) -> None:
        if seq_len < 1:
            raise RuntimeSetupError(f"seq_len={seq_len}: must be >= 1 token")
        if seed < 0:
            raise RuntimeSetupError(f"seed={seed}: must be >= 0; use a non-negative seed")
        if source.num_tokens < seq_len + 1:
            raise RuntimeSetupError(
                f"the data holds {source.num_tokens} tokens, fewer than seq_len + 1 = "
                f"{seq_len + 1} needed for one sample; use more data or a shorter seq_len")
        self.source, self.seq_len, self.seed = source, seq_len, seed

    def sample(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [seq_len], targets [seq_len]) of global sample ``index`` at ``step``."""
        if step < 0 or index < 0:
            raise RuntimeSetupError(f"step={step}, index={index}: both must be >= 0")
        num_starts = self.source.num_tokens - self.seq_len
        offset = int(np.random.default_rng([self.seed, step, index]).integers(num_starts))
        window = self.source.slice(offset, self.seq_len + 1)
        return window[:-1], window[1:]

    def batch_for(self, step: int, sample_indices: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [b, s], targets [b, s]) as long tensors for the given global indices."""
        pairs = [self.sample(step, i) for i in sample_indices]
        inputs = np.stack([p[0] for p in pairs]) if pairs else np.empty((0, self.seq_len))
        targets = np.stack([p[1] for p in pairs]) if pairs else np.empty((0, self.seq_len))
        return (torch.from_numpy(inputs.astype(np.int64)),
                torch.from_numpy(targets.astype(np.int64)))


def share_range(batch_shares: Sequence[int], replica: int) -> range:
    """Global sample indices [start, start + share) read by ``replica`` when the global batch
    is split into ``batch_shares`` (in replica order)."""
    if any(b < 0 for b in batch_shares):
        raise RuntimeSetupError(
            f"batch_shares={list(batch_shares)}: every share must be >= 0 samples")
    if not 0 <= replica < len(batch_shares):
        raise RuntimeSetupError(
            f"replica={replica} is not in 0..{len(batch_shares) - 1}: there are "
            f"{len(batch_shares)} batch shares")
    start = sum(batch_shares[:replica])
    return range(start, start + batch_shares[replica])
