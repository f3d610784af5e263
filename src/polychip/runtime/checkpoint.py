"""Checkpoints that outlive any layout: save a running plan's parameters and optimizer state
under global names, resume them into any plan of the same model
(:mod:`polychip.runtime.checkpoint_manifest` describes the directory).

A save is a collective at a step boundary. The optimizer state is first gathered the way
ZeRO-1 gathers parameters (:meth:`StageOptimizer.full_state`), so every rank holds the full
state of the parameters it holds, whatever the plan's sharding; then the ranks of replica 0
(every replica holds the whole model) write their parameters -- under TP, each rank its part
of a split tensor, TP rank 0 the replicated ones -- in the optimizer's dtype (the fp32 master
weights under mixed precision). The copy to host memory is synchronous; the writing is done
by a background thread, so the next steps run while the file is written (``--save-every``
costs the copy, not the disk).

Loading reads, for each parameter a rank holds, the shards that cover it, assembles the full
tensor and keeps the rank's part (:meth:`~polychip.runtime.model.StageModule.shard`), then
hands parameters and state to the optimizer (:meth:`StageOptimizer.load_full_state`). A
tied head held apart from the embedding resumes from ``embed.weight``.

Why not ``torch.distributed.checkpoint``: resharding there is DTensor's, and a DTensor's mesh
spans one device type; a plan's islands mix device types (CUDA, NPU, CPU), its TP degrees
differ per stage and its replicas hold uneven pipelines. A shard here is a plain range along
one dimension, so any holder of a parameter can read it on any device.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from polychip.runtime.checkpoint_manifest import (
    SCHEMA_VERSION,
    Manifest,
    Shard,
    TensorEntry,
    check_model,
    check_seed,
    prune,
    read_manifest,
    step_dir,
    write_manifest,
)
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.grad_layout import LOSS

if TYPE_CHECKING:
    from polychip.runtime.buckets import Entry
    from polychip.runtime.train import Trainer


def _saved_name(trainer: Trainer, name: str) -> str:
    tied = trainer.plan.model.tie_embeddings
    return "embed.weight" if tied and name == "head.weight" else name


class Checkpointer:
    """Saves and loads one rank's part of the run under ``root``; ``keep`` newest saves kept
    (0: all)."""

    def __init__(self, trainer: Trainer, root: str | Path, keep: int = 0) -> None:
        self.trainer, self.root, self.keep = trainer, Path(root), keep
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_saved: Path | None = None

    # ---- saving --------------------------------------------------------------------------
    def _writes(self, entry: Entry) -> bool:
        """Whether this rank writes ``entry``: replica 0, one TP rank per replicated tensor,
        and a tied head only through the embedding."""
        t, role = self.trainer, self.trainer.role
        if role.replica != 0 or entry.name == LOSS:
            return False
        if t.plan.model.tie_embeddings and entry.name == "head.weight":
            return False
        return entry.split is not None or t.model.tp.rank == 0

    def _shard(self, entry: Entry, file: str) -> TensorEntry:
        shape = list(entry.shape)
        if entry.split is None:
            return TensorEntry(shape=tuple(shape), shards=(Shard(file=file),))
        tp = self.trainer.model.tp
        start, end = entry.split.bounds(tp.rank, tp.size)
        shape[entry.split.dim] = entry.split.full
        return TensorEntry(shape=tuple(shape), shards=(
            Shard(file=file, dim=entry.split.dim, start=start, end=end),))

    def save(self, step: int, extra: dict[str, Any] | None = None) -> Path:
        """Collective: save the state after ``step`` optimizer steps; returns the folder
        (complete once every rank's writer has finished: :meth:`wait`)."""
        self.wait()  # the previous save is complete everywhere after the gather below
        t = self.trainer
        flats = t.optimizer.full_state()
        file = f"rank-{t.role.rank:05d}.pt"
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        index: dict[str, TensorEntry] = {}
        for e in t.grads.entries:
            if self._writes(e):
                tensors[e.name] = {k: f[e.offset:e.end].view(e.shape).to("cpu", copy=True)
                                   for k, f in flats.items()}
                index[e.name] = self._shard(e, file)
        everyone: list[dict[str, TensorEntry] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, index)
        folder = step_dir(self.root, step)
        folder.mkdir(parents=True, exist_ok=True)
        if dist.get_rank() == 0:
            self._write_manifest(folder, step, everyone, list(flats), extra or {})
        if tensors:
            self._writer = threading.Thread(target=self._write, args=(folder / file, tensors),
                                            name="polychip-checkpoint", daemon=True)
            self._writer.start()
        self.last_saved = folder
        return folder

    def _write_manifest(self, folder: Path, step: int,
                        everyone: list[dict[str, TensorEntry] | None], keys: list[str],
                        extra: dict[str, Any]) -> None:
        t = self.trainer
        merged: dict[str, list[Shard]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for index in everyone:
            for name, entry in (index or {}).items():
                merged.setdefault(name, []).extend(entry.shards)
                shapes[name] = entry.shape
        manifest = Manifest(
            schema_version=SCHEMA_VERSION, model=t.plan.model.to_dict(), step=step,
            samples_seen=step * t.plan.job.global_batch, optimizer=t.config.optimizer,
            state_keys=tuple(keys),
            tensors={n: TensorEntry(shape=shapes[n], shards=tuple(s)) for n, s in merged.items()},
            state={"optimizer_step": t.optimizer.step_count(), "seed": t.config.seed,
                   "scaler": None if t.scaler is None else t.scaler.state_dict(),
                   "lr_schedule": t.lr_schedule.state_dict(), **extra})
        if self.keep:
            prune(self.root, self.keep)
        write_manifest(folder, manifest)

    def _write(self, path: Path, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        try:
            tmp = path.with_name(path.name + ".tmp")
            torch.save(tensors, tmp)
            tmp.replace(path)
        except BaseException as exc:  # reported by wait(), on the training thread
            self._error = exc

    def wait(self) -> None:
        """Until this rank's last save is on disk (raises what the writer raised)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeSetupError(f"writing the checkpoint failed: {error}") from error

    # ---- loading -------------------------------------------------------------------------
    def load(self, folder: str | Path) -> Manifest:
        """Every rank: the parameters and optimizer state of the save in ``folder``."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        t = self.trainer
        check_model(manifest, t.plan.model, folder)
        check_seed(manifest, t.config.seed, folder)
        if manifest.optimizer != t.config.optimizer:
            raise RuntimeSetupError(
                f"{folder}: saved with the {manifest.optimizer} optimizer, this run uses "
                f"{t.config.optimizer}; resume with the same optimizer")
        reader = _ShardReader(folder, manifest)
        flats = {k: torch.zeros_like(t.grads.param_buffer, dtype=t.precision.optimizer_dtype)
                 for k in manifest.state_keys}
        for e in t.grads.entries:
            if e.name == LOSS:
                continue
            for key, flat in flats.items():
                full = reader.full(_saved_name(t, e.name), key)
                part = full if e.split is None else e.split.part(full, t.model.tp.rank,
                                                                 t.model.tp.size)
                if tuple(part.shape) != e.shape:
                    raise RuntimeSetupError(
                        f"{folder}: {e.name} {key} has shape {tuple(part.shape)} for this rank, "
                        f"the plan's stage holds {e.shape}")
                flat[e.offset:e.end].copy_(part.reshape(-1))
        t.optimizer.load_full_state(flats, int(manifest.state.get("optimizer_step", 0)))
        if t.scaler is not None and manifest.state.get("scaler"):
            t.scaler.load_state_dict(manifest.state["scaler"])
        if manifest.state.get("lr_schedule"):  # the run's schedule goes on where it was
            t.lr_schedule.load_state_dict(manifest.state["lr_schedule"])
        return manifest


class _ShardReader:
    """Full tensors of a save, assembled from the shards that cover them."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder, self.manifest = folder, manifest
        self._files: dict[str, dict[str, dict[str, torch.Tensor]]] = {}

    def _file(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        if name not in self._files:
            self._files[name] = torch.load(self.folder / name, map_location="cpu",
                                           weights_only=True, mmap=True)
        return self._files[name]

    def full(self, name: str, key: str) -> torch.Tensor:
        entry = self.manifest.tensors.get(name)
        if entry is None:
            raise RuntimeSetupError(f"{self.folder}: the checkpoint holds no {name!r}; it was "
                                    f"saved from another model")
        out: torch.Tensor | None = None
        covered = 0
        for shard in entry.shards:
            data = self._file(shard.file)[name][key]
            if shard.dim is None:
                return data
            if out is None:
                out = data.new_empty(entry.shape)
            out.narrow(shard.dim, shard.start, shard.end - shard.start).copy_(data)
            covered += shard.end - shard.start
        assert out is not None
        dim = entry.shards[0].dim
        assert dim is not None
        if covered != entry.shape[dim]:
            raise RuntimeSetupError(f"{self.folder}: the shards of {name!r} cover {covered} of "
                                    f"its {entry.shape[dim]} rows; the save is damaged")
        return out
