"""A checkpoint directory's index, without torch: which saves are complete, the newest one,
pruning to the newest K, a save of another model or another schema version refused with the
difference named. Saves are made by hand here (a manifest and empty rank files)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from polychip.runtime.checkpoint_manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    Manifest,
    Shard,
    TensorEntry,
    check_model,
    is_complete,
    latest_complete,
    prune,
    read_manifest,
    resumable,
    step_dir,
    write_manifest,
)
from polychip.runtime.errors import RuntimeSetupError

from .plans import MICRO

SRC = Path(__file__).resolve().parents[2] / "src"


def _save(root: Path, step: int, *, files: tuple[str, ...] = ("rank-00000.pt", "rank-00001.pt"),
          written: tuple[str, ...] | None = None, manifest: bool = True) -> Path:
    """A save at ``step`` whose manifest lists ``files``, of which ``written`` exist (default:
    all); ``manifest=False``: the folder of a save that died before its manifest."""
    folder = step_dir(root, step)
    folder.mkdir(parents=True)
    if manifest:
        tensors = {f"t{i}": TensorEntry(shape=(4, 2), shards=(
            Shard(file=f, dim=0, start=2 * i, end=2 * i + 2),)) for i, f in enumerate(files)}
        write_manifest(folder, Manifest(
            schema_version=SCHEMA_VERSION, model=MICRO.to_dict(), step=step,
            samples_seen=8 * step, optimizer="adamw", state_keys=("param",), tensors=tensors,
            state={"optimizer_step": step, "seed": 0}))
    for name in files if written is None else written:
        (folder / name).write_bytes(b"tensors")
    return folder


def test_the_module_imports_without_torch() -> None:
    code = ("import sys, polychip.runtime.checkpoint_manifest; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr or "checkpoint_manifest imported torch"


def test_latest_complete_with_no_saves_is_none(tmp_path: Path) -> None:
    assert latest_complete(tmp_path / "never-created") is None
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("not a save")
    (tmp_path / "ckpt" / "step-12").mkdir()  # too few digits: not a save folder
    assert latest_complete(tmp_path / "ckpt") is None
    assert resumable(tmp_path / "ckpt", MICRO, 0) is None


def test_only_incomplete_saves_are_an_error_that_says_so(tmp_path: Path) -> None:
    _save(tmp_path, 1, written=("rank-00000.pt",))  # one rank's file missing
    _save(tmp_path, 2, manifest=False)  # died before the manifest
    assert not is_complete(step_dir(tmp_path, 1)) and not is_complete(step_dir(tmp_path, 2))
    with pytest.raises(RuntimeSetupError,
                       match=r"2 checkpoint save\(s\) \(step-000001, step-000002\), none "
                             r"complete"):
        latest_complete(tmp_path)


def test_the_newest_complete_save_wins_over_newer_incomplete_ones(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    _save(tmp_path, 3)
    _save(tmp_path, 5, written=())  # the writers never finished
    _save(tmp_path, 7, manifest=False)
    (step_dir(tmp_path, 5) / "rank-00000.pt.tmp").write_bytes(b"half")
    assert latest_complete(tmp_path) == step_dir(tmp_path, 3)
    assert resumable(tmp_path, MICRO, 0).step == 3  # type: ignore[union-attr]
    _save(tmp_path, 10)
    assert latest_complete(tmp_path) == step_dir(tmp_path, 10)  # numeric order, not text


def test_prune_keeps_the_k_newest_complete_and_a_save_in_progress(tmp_path: Path) -> None:
    for step in (1, 2, 4, 6):
        _save(tmp_path, step)
    _save(tmp_path, 3, written=("rank-00000.pt",))  # abandoned, older than the newest complete
    _save(tmp_path, 5, manifest=False)  # the same
    _save(tmp_path, 8, written=("rank-00000.pt",))  # newer: a save still being written
    removed = prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == [f"step-00000{i}" for i in (1, 2, 3, 5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000004", "step-000006", "step-000008"]
    assert prune(tmp_path, keep=0) == []  # 0: keep every complete save


def test_prune_orders_saves_by_step_not_by_name(tmp_path: Path) -> None:
    """step-1000000 sorts before step-999999 as text; it is the newer save, being written."""
    _save(tmp_path, 999_998)
    _save(tmp_path, 999_999)
    _save(tmp_path, 1_000_000, written=())
    assert [p.name for p in prune(tmp_path, keep=1)] == ["step-999998"]
    assert step_dir(tmp_path, 1_000_000).is_dir()


def test_check_model_names_each_differing_field(tmp_path: Path) -> None:
    manifest = read_manifest(_save(tmp_path, 1))
    check_model(manifest, dataclasses.replace(MICRO, name="renamed"), "here")  # same shapes
    wider = dataclasses.replace(MICRO, hidden_size=32, vocab_size=512)
    with pytest.raises(RuntimeSetupError) as info:
        check_model(manifest, wider, "here")
    message = str(info.value)
    assert "hidden_size 16 (checkpoint) vs 32 (plan)" in message
    assert "vocab_size 256 (checkpoint) vs 512 (plan)" in message
    assert "num_layers" not in message
    with pytest.raises(RuntimeSetupError, match=r"hidden_size 16 \(checkpoint\) vs 32"):
        resumable(tmp_path, wider, 0)


def test_a_manifest_of_another_schema_version_is_refused_naming_it(tmp_path: Path) -> None:
    folder = _save(tmp_path, 1)
    raw = json.loads((folder / MANIFEST).read_text())
    raw["schema_version"] = SCHEMA_VERSION + 1
    (folder / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(RuntimeSetupError,
                       match=rf"schema version {SCHEMA_VERSION + 1}, this polychip reads "
                             rf"version {SCHEMA_VERSION}"):
        read_manifest(folder)
    assert not is_complete(folder)  # never resumed from, and refused by name:
    with pytest.raises(RuntimeSetupError, match=rf"schema version {SCHEMA_VERSION + 1}"):
        latest_complete(tmp_path)
    _save(tmp_path, 2)  # a newer save of this version is the one resumed from
    assert latest_complete(tmp_path) == step_dir(tmp_path, 2)
    (folder / MANIFEST).write_text("{truncated")
    with pytest.raises(RuntimeSetupError, match="cannot read the checkpoint's manifest"):
        read_manifest(folder)


def test_resuming_with_another_seed_is_refused_naming_both(tmp_path: Path) -> None:
    _save(tmp_path, 2)  # saved by a run with seed 0
    assert resumable(tmp_path, MICRO, 0).step == 2  # type: ignore[union-attr]
    with pytest.raises(RuntimeSetupError, match="--seed 0, this one has --seed 7"):
        resumable(tmp_path, MICRO, 7)
