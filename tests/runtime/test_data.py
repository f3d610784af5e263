"""Token data: determinism, disjoint shares, the default corpus, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from polychip.runtime.data import (
    SampleStream,
    StdlibCorpus,
    TextFileSource,
    TokenFileSource,
    open_source,
    share_range,
)
from polychip.runtime.errors import RuntimeSetupError

SMALL_CORPUS = StdlibCorpus(max_bytes=64 * 1024)


def test_default_corpus_is_nonempty_bytes_of_stdlib_sources() -> None:
    assert SMALL_CORPUS.vocab_size == 256
    assert SMALL_CORPUS.num_tokens == 64 * 1024
    tokens = SMALL_CORPUS.slice(0, 4096)
    assert tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < 256
    text = bytes(tokens.astype(np.uint8)).decode("utf-8", errors="replace")
    assert "import" in text or "def " in text


def test_same_seed_step_index_gives_the_same_sample() -> None:
    a = SampleStream(SMALL_CORPUS, seq_len=16, seed=3)
    b = SampleStream(StdlibCorpus(max_bytes=64 * 1024), seq_len=16, seed=3)
    x1, y1 = a.sample(step=5, index=7)
    x2, y2 = b.sample(step=5, index=7)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert np.array_equal(x1[1:], y1[:-1])  # targets are the inputs shifted by one
    other_step, _ = a.sample(step=6, index=7)
    other_seed, _ = SampleStream(SMALL_CORPUS, seq_len=16, seed=4).sample(step=5, index=7)
    assert not np.array_equal(x1, other_step) and not np.array_equal(x1, other_seed)


def test_uneven_shares_read_disjoint_ranges_that_rebuild_the_global_batch() -> None:
    shares = [12, 4]
    ranges = [share_range(shares, r) for r in range(2)]
    assert ranges == [range(0, 12), range(12, 16)]
    stream = SampleStream(SMALL_CORPUS, seq_len=8, seed=0)
    full_x, full_y = stream.batch_for(2, range(16))
    parts = [stream.batch_for(2, r) for r in ranges]
    assert full_x.dtype == torch.long and full_x.shape == (16, 8)
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    assert share_range([3, 0, 5], 1) == range(3, 3)


def test_text_and_token_files(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_bytes(b"hello world, hello tokens")
    src = open_source(text)
    assert isinstance(src, TextFileSource) and src.num_tokens == 25
    assert bytes(src.slice(0, 5).astype(np.uint8)) == b"hello"

    tokens = np.arange(100, dtype=np.uint16) * 3
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    src = open_source(path, vocab_size=300)
    assert isinstance(src, TokenFileSource) and src.num_tokens == 100
    assert np.array_equal(src.slice(10, 3), [30, 33, 36])
    x, y = SampleStream(src, seq_len=4).sample(0, 0)
    assert np.array_equal(np.diff(np.concatenate([x, y[-1:]])), [3, 3, 3, 3])


def test_bad_paths_and_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(RuntimeSetupError, match="does not exist"):
        open_source(tmp_path / "missing.txt")
    with pytest.raises(RuntimeSetupError, match="is a directory"):
        open_source(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(RuntimeSetupError, match="empty"):
        open_source(empty)
    short = tmp_path / "short.txt"
    short.write_bytes(b"abc")
    with pytest.raises(RuntimeSetupError, match="fewer than seq_len"):
        SampleStream(open_source(short), seq_len=3)
    big = tmp_path / "big.bin"
    np.array([1, 2, 512], dtype=np.uint16).tofile(big)
    with pytest.raises(RuntimeSetupError, match=r"token id 512.*vocab_size is 256"):
        open_source(big, vocab_size=256)
    with pytest.raises(RuntimeSetupError, match="no vocab_size"):
        open_source(big)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"abc")
    with pytest.raises(RuntimeSetupError, match="odd number"):
        TokenFileSource(odd, vocab_size=256)
    with pytest.raises(RuntimeSetupError, match="replica=2"):
        share_range([1, 1], 2)
