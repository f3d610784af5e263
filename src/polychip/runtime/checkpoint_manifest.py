"""A checkpoint directory's index, torch-free: which saves are complete, the newest one, whether
it fits a model, and pruning old ones (``--keep``).

A checkpoint directory holds one folder per save, ``step-000120/`` (the number of optimizer
steps taken), with ``manifest.json`` and one ``rank-NNNNN.pt`` per rank that wrote tensors.
The manifest is written by rank 0 once every rank has said what it will write; each rank
writes its file under a temporary name and renames it when done (atomic on POSIX). A save is
*complete* when its manifest exists and lists only files that exist: a run killed in the
middle of a save leaves an incomplete folder that :func:`latest_complete` passes over.

Tensors are stored under *global* names (``layers.5.attn.wq.weight``), each as the shards its
writers held: a shard is the range ``[start, end)`` of the full tensor along ``dim`` (``dim``
None: the whole tensor). Nothing in a checkpoint depends on the plan that saved it -- chips,
stage split, TP degree, replicas, batch shares or ZeRO-1 -- so any plan of the same model
resumes from it (:mod:`polychip.runtime.checkpoint`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from polychip.runtime.errors import RuntimeSetupError
from polychip.spec.model import ModelSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
# Fields of a ModelSpec that do not change any tensor's shape or meaning.
_NOT_SHAPE = frozenset({"name", "max_positions"})


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    dim: int | None = None  # None: the whole tensor
    start: int = 0
    end: int = 0


class TensorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: tuple[int, ...]
    shards: tuple[Shard, ...]


class Manifest(BaseModel):
    """What a save holds. ``tensors``: global name -> its shards (every name holds the same
    keys in its files: ``param`` and the optimizer's per-element state); ``state``: the
    training state beside the tensors (``step``, ``samples_seen``, the optimizer's step
    count, the loss scaler, the LR schedule, the seed)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int
    model: dict[str, Any]
    step: int
    samples_seen: int
    optimizer: str
    state_keys: tuple[str, ...]
    tensors: dict[str, TensorEntry]
    state: dict[str, Any]

    def files(self) -> set[str]:
        return {s.file for t in self.tensors.values() for s in t.shards}


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Atomically: a reader sees no manifest or the whole of it."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=1))
    tmp.replace(folder / MANIFEST)


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeSetupError(f"{path}: cannot read the checkpoint's manifest ({exc})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise RuntimeSetupError(
            f"{path}: checkpoint schema version {version!r}, this polychip reads version "
            f"{SCHEMA_VERSION}; resume with the polychip that saved it")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise RuntimeSetupError(f"{path}: not a polychip checkpoint manifest ({exc})") from None


def saves(root: str | Path) -> list[tuple[int, Path]]:
    """Every save folder under ``root`` (complete or not), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def is_complete(folder: Path) -> bool:
    if not (folder / MANIFEST).is_file():
        return False
    try:
        manifest = read_manifest(folder)
    except RuntimeSetupError:
        return False
    return all((folder / f).is_file() for f in manifest.files())


def latest_complete(root: str | Path) -> Path | None:
    """The newest complete save under ``root``; None when ``root`` holds no save at all.
    Saves that exist but are all incomplete are an error (a run died while saving, and
    nothing can be resumed from)."""
    found = saves(root)
    for _, folder in reversed(found):
        if is_complete(folder):
            return folder
        _refuse_other_schema(folder)
    if found:
        raise RuntimeSetupError(
            f"{root}: {len(found)} checkpoint save(s) ({', '.join(p.name for _, p in found)}), "
            f"none complete (a run stopped while saving); remove them to start afresh, or "
            f"point --checkpoint-dir at another directory")
    return None


def _refuse_other_schema(folder: Path) -> None:
    """A save written by another schema version is not an incomplete save: say so, by name
    (an unreadable or missing manifest is a save that died while being written)."""
    try:
        raw = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    if isinstance(raw, dict) and raw.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        read_manifest(folder)  # raises, naming both versions


def check_model(manifest: Manifest, model: ModelSpec, where: str | Path) -> None:
    """The saved model has this model's shape: else an error naming every difference."""
    mine = model.to_dict()
    diffs = [f"{k} {manifest.model.get(k)!r} (checkpoint) vs {v!r} (plan)"
             for k, v in mine.items() if k not in _NOT_SHAPE and manifest.model.get(k) != v]
    if diffs:
        raise RuntimeSetupError(
            f"{where}: the checkpoint holds another model than the plan's: {'; '.join(diffs)}; "
            f"resume with a plan of the same model, or start without --resume")


def check_seed(manifest: Manifest, seed: int, where: str | Path) -> None:
    """The data order is a function of (seed, step, sample index): a resumed run must keep
    the seed, or it would train on other samples than the run it continues."""
    saved = manifest.state.get("seed")
    if saved is not None and saved != seed:
        raise RuntimeSetupError(
            f"{where}: saved by a run with --seed {saved}, this one has --seed {seed}; the "
            f"data order follows the seed: resume with --seed {saved}")


def resumable(root: str | Path, model: ModelSpec, seed: int) -> Manifest | None:
    """Before any process starts: the newest complete save under ``root`` checked against
    ``model`` and ``seed`` (None: nothing saved yet, start from step 0)."""
    folder = latest_complete(root)
    if folder is None:
        return None
    manifest = read_manifest(folder)
    check_model(manifest, model, folder)
    check_seed(manifest, seed, folder)
    return manifest


def prune(root: str | Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest complete saves, and incomplete saves older than the
    newest complete one; the removed folders."""
    found = saves(root)
    complete = [(step, p) for step, p in found if is_complete(p)]
    kept = {p for _, p in (complete[-keep:] if keep > 0 else complete)}
    newest = complete[-1][0] if complete else None
    removed = []
    for step, folder in found:  # by step number: step-1000000 is newer than step-999999
        stale = folder not in kept and ((step, folder) in complete or
                                        (newest is not None and step < newest))
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
