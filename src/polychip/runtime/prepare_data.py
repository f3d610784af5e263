"""``polychip prepare-data``: text files and JSON lines turned into one token file, streaming.

Inputs, in the order given. A ``.jsonl`` (or ``.ndjson``) file holds one JSON object per line,
each one *document* whose text is under ``field`` (default ``"text"``); blank lines are
skipped. Any other file is one document of UTF-8 text (undecodable bytes replaced), tokenized
line by line in batches exactly as ``polychip train --tokenizer`` does
(:mod:`polychip.runtime.tokenized`, the one home of tokenizing). Ids are produced without the
tokenizer's special tokens (no BOS), and each document is followed by the separator
(:func:`~polychip.runtime.tokenized.separator`): the tokenizer's end-of-text token, so that a
training sample spanning two documents shows the model where one ends and the next begins.
*After* each document rather than only between them: preparing files one by one and
concatenating the outputs gives the same tokens as preparing them together. A tokenizer that
holds none of the known end-of-text names (and no ``--eos``), or ``--no-eos``: documents are
concatenated as they are, and the summary says so.

Every input is checked (it exists, is a file, can be read) and the tokenizer loaded before
anything is written; the output is the token file format of
:mod:`polychip.runtime.token_file` (``uint16`` or ``uint32`` by the vocabulary), written under
a temporary name and renamed, so a failure -- a JSON line without the field, say -- leaves no
half file. Memory holds one batch of lines or documents at a time, never the corpus.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.token_file import TokenFileWriter, is_token_file, token_dtype
from polychip.runtime.tokenized import (
    BATCH_BYTES,
    encode,
    joined,
    load_tokenizer,
    separator,
    text_batches,
    tokenizer_vocab_size,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

JSONL_SUFFIXES = (".jsonl", ".ndjson")
DOCUMENTS_PER_BATCH = 1024
Progress = Callable[[int, int], None]
"""Called as input is consumed: (bytes read, documents finished) since the last call."""


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare_data` wrote."""

    path: Path
    num_tokens: int
    num_documents: int
    dtype: str  # "uint16" or "uint32"
    vocab_size: int
    eos: tuple[str, int] | None  # the separator after each document (name, id), or none


def check_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The inputs as paths, each an existing, readable file that is not a token file."""
    if not inputs:
        raise RuntimeSetupError("no input files: give text or .jsonl files to tokenize")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "does not exist"
            raise RuntimeSetupError(f"input {p} {what}: give text or .jsonl files")
        if not os.access(p, os.R_OK):
            raise RuntimeSetupError(f"input {p} cannot be read (permission denied)")
        if is_token_file(p):
            raise RuntimeSetupError(f"input {p} is a token file, already tokenized: pass it "
                                    f"to `polychip train --data` as it is")
    return paths


def jsonl_batches(path: Path, field: str) -> Iterator[tuple[list[str], int]]:
    """The documents of a JSON-lines file (each line's ``field``), in batches, each with the
    bytes it took; a line that is not an object holding a string ``field`` is an error that
    names the file and line."""
    docs: list[str] = []
    size = 0
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                size += len(raw)
                if raw.strip():
                    docs.append(_document(path, number, raw, field))
                if len(docs) >= DOCUMENTS_PER_BATCH or size >= BATCH_BYTES:
                    yield docs, size
                    docs, size = [], 0
    except OSError as exc:
        raise RuntimeSetupError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if docs or size:
        yield docs, size


def _document(path: Path, number: int, raw: bytes, field: str) -> str:
    try:
        record = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RuntimeSetupError(f"{path}:{number}: not a JSON line ({exc}); each line of a "
                                f".jsonl file is one JSON object") from None
    if not isinstance(record, dict) or field not in record:
        keys = ", ".join(map(repr, record)) if isinstance(record, dict) else "not an object"
        raise RuntimeSetupError(f"{path}:{number}: no {field!r} field (found: {keys}); name "
                                f"the key that holds the text with --field")
    text = record[field]
    if not isinstance(text, str):
        raise RuntimeSetupError(f"{path}:{number}: {field!r} holds a {type(text).__name__}, "
                                f"not a string of text")
    return text


def prepare_data(inputs: Sequence[str | os.PathLike[str]], tokenizer_path: str | os.PathLike[str],
                 out: str | os.PathLike[str], *, field: str = "text", eos: str | None = None,
                 use_eos: bool = True, progress: Progress | None = None) -> Prepared:
    """Tokenize ``inputs`` into the token file ``out`` (a ``.npy``); see the module's text."""
    paths = check_inputs(inputs)
    tokenizer = load_tokenizer(tokenizer_path)
    vocab = tokenizer_vocab_size(tokenizer)
    sep = separator(tokenizer, eos) if use_eos else None
    dtype = token_dtype(vocab)
    report = progress or (lambda num_bytes, num_docs: None)
    documents = 0
    with TokenFileWriter(out, dtype) as writer:
        for path in paths:
            documents += _write_input(writer, tokenizer, path, field,
                                      None if sep is None else sep[1], report)
        if writer.num_tokens == 0:
            raise RuntimeSetupError(f"the inputs ({', '.join(map(str, paths))}) hold no text: "
                                    f"nothing to write")
    return Prepared(path=writer.path, num_tokens=writer.num_tokens, num_documents=documents,
                    dtype=dtype.name, vocab_size=vocab, eos=sep)


def _write_input(writer: TokenFileWriter, tokenizer: Tokenizer, path: Path, field: str,
                 eos_id: int | None, report: Progress) -> int:
    """One input's documents into ``writer``; how many."""
    if path.suffix in JSONL_SUFFIXES:
        documents = 0
        for docs, size in jsonl_batches(path, field):
            writer.write(joined(encode(tokenizer, docs), after_each=eos_id))
            documents += len(docs)
            report(size, len(docs))
        return documents
    for lines, size in text_batches(path):
        writer.write(joined(encode(tokenizer, lines)))
        report(size, 0)
    if path.stat().st_size == 0:
        return 0
    if eos_id is not None:
        writer.write([eos_id])
    report(0, 1)
    return 1
