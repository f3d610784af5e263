"""Token files: the one format in which polychip writes and reads pre-tokenized data.

A token file is a NumPy ``.npy`` file (the NPY format, version 1.0:
https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html) holding one flat,
C-ordered array of token ids: little-endian ``uint16`` when the vocabulary has at most 65,536
tokens, else ``uint32`` (:func:`token_dtype`). Its header names the dtype and the number of
tokens, so a reader needs nothing else: ``np.load(path, mmap_mode="r")`` reads one anywhere.
``polychip prepare-data`` writes them, the ``--tokenizer`` cache is one, and ``polychip train
--data tokens.npy`` memory-maps them (:func:`read_tokens`). A headerless ``.bin`` of
little-endian ``uint16`` ids (nanoGPT's format) is read too.

:class:`TokenFileWriter` streams: ids are appended behind a header of fixed size (128 bytes)
whose length field is filled in when the file is closed, under a temporary name that is then
renamed, so a reader never sees half a file and the corpus is never held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np

from polychip.runtime.errors import RuntimeSetupError

TOKEN_SUFFIX = ".npy"
LEGACY_SUFFIX = ".bin"  # headerless little-endian uint16
UINT16_MAX_VOCAB = 1 << 16
_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # magic (8) + header length (2) + the dict, padded; a multiple of 64
_READ_DTYPES = (np.dtype("<u2"), np.dtype("<u4"))


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest dtype that holds every id of a ``vocab_size``-token vocabulary."""
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


def is_token_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix in (TOKEN_SUFFIX, LEGACY_SUFFIX)


def _header(dtype: np.dtype, num_tokens: int) -> bytes:
    fields = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({num_tokens},), }}"
    pad = _HEADER_BYTES - len(_MAGIC) - 2 - len(fields) - 1
    assert pad >= 0, num_tokens
    body = (fields + " " * pad + "\n").encode("latin1")
    return _MAGIC + len(body).to_bytes(2, "little") + body


class TokenFileWriter:
    """Appends token ids to ``path`` (a ``.npy``), streaming; whole on :meth:`close`, nothing
    (the temporary file removed) when the ``with`` block raises."""

    def __init__(self, path: str | os.PathLike[str], dtype: np.dtype) -> None:
        self.path, self.dtype = Path(path), np.dtype(dtype)
        if self.path.suffix != TOKEN_SUFFIX:
            raise RuntimeSetupError(
                f"{self.path}: a token file is a NumPy {TOKEN_SUFFIX} file (its header names "
                f"the dtype); name it {self.path.with_suffix(TOKEN_SUFFIX).name}")
        assert self.dtype in _READ_DTYPES, self.dtype
        self.num_tokens = 0
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._partial, "wb")  # noqa: SIM115 -- closed by close()/abort()
        except OSError as exc:
            raise RuntimeSetupError(f"cannot write the token file {self.path}: {exc}") from exc
        self._file.write(_header(self.dtype, 0))

    def write(self, ids: np.ndarray | list[int]) -> None:
        array = np.asarray(ids)
        self._file.write(array.astype(self.dtype, copy=False).tobytes())
        self.num_tokens += len(array)

    def close(self) -> Path:
        """Fill in the length, and rename the file to its name; the path."""
        self._file.seek(0)
        self._file.write(_header(self.dtype, self.num_tokens))
        self._file.close()
        self._partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def read_tokens(path: str | os.PathLike[str]) -> np.ndarray:
    """A token file's ids, memory-mapped (``.npy``: uint16 or uint32, from its header;
    ``.bin``: uint16)."""
    p = Path(path)
    if p.suffix == LEGACY_SUFFIX:
        size = p.stat().st_size
        if size % 2:
            raise RuntimeSetupError(
                f"{p} has {size} bytes, an odd number: a uint16 token file holds 2 bytes per "
                f"token; check that it was written as np.uint16")
        return np.memmap(p, dtype="<u2", mode="r")
    try:
        data = np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RuntimeSetupError(f"{p} is not a readable .npy token file ({exc}); write one "
                                f"with `polychip prepare-data`") from exc
    if data.ndim != 1 or data.dtype not in _READ_DTYPES:
        raise RuntimeSetupError(
            f"{p} holds a {data.dtype} array of shape {data.shape}: a token file holds one "
            f"flat uint16 or uint32 array; write one with `polychip prepare-data`")
    return data


class TokenArray:
    """A token source over an array of ids (:class:`~polychip.runtime.data.TokenSource`):
    subclasses set ``_data`` (the ids, usually memory-mapped) and ``_vocab_size``."""

    _data: np.ndarray
    _vocab_size: int

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def num_tokens(self) -> int:
        return len(self._data)

    def slice(self, start: int, length: int) -> np.ndarray:
        return np.asarray(self._data[start:start + length], dtype=np.int64)
