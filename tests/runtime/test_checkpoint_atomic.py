"""A save that fails halfway -- the disk fills while a rank's writer thread is writing -- leaves
the previous save whole: it is still the newest complete one, the run stops with an error that
says the checkpoint could not be written (a user's error: `polychip train` exits 2), and
`--resume` continues from the previous save."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from polychip.runtime.checkpoint_manifest import is_complete, latest_complete, read_manifest
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.launch import launch_local
from polychip.runtime.session import TrainTask
from polychip.runtime.train import TrainConfig

from .plans import cpu_test_cluster, dp_plan
from .reference import CORPUS_BYTES


def _plan():  # two replicas of one rank each: rank 0 (replica 0) writes the save
    return dp_plan(cpu_test_cluster(), [(0, 0, "cpu-slow", 2, 2), (0, 1, "cpu-slow", 2, 2)])


def _config(root: Path, **kw: object) -> TrainConfig:
    return TrainConfig(steps=3, lr=0.05, max_corpus_bytes=CORPUS_BYTES, checkpoint_dir=str(root),
                       save_every=1, **kw)


@pytest.mark.dist
def test_a_full_disk_halfway_through_a_save_leaves_the_previous_one_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, real_save = tmp_path / "ckpt", torch.save

    def disk_fills(obj: object, f: str | os.PathLike[str], *args: object, **kw: object) -> None:
        if "step-000002" not in str(f):
            return real_save(obj, f, *args, **kw)
        Path(f).write_bytes(b"PK\x03\x04 the first bytes of the zip, then ")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    # the ranks are forked from this process (CPU plans), the writer threads with them
    monkeypatch.setattr(torch, "save", disk_fills)
    with pytest.raises(RuntimeSetupError,
                       match=r"writing the checkpoint failed: .*No space left on device"):
        launch_local(_plan(), TrainTask(_config(root)))
    monkeypatch.setattr(torch, "save", real_save)

    previous, failed = root / "step-000001", root / "step-000002"
    assert latest_complete(root) == previous and is_complete(previous)
    assert not (root / "step-000003").exists()  # the run stopped at the next save
    assert (failed / "manifest.json").is_file() and not is_complete(failed)
    assert not (failed / "rank-00000.pt").exists()  # never renamed into place...
    assert (failed / "rank-00000.pt.tmp").stat().st_size > 0  # ...though half written
    saved = torch.load(previous / "rank-00000.pt", weights_only=True)
    assert set(next(iter(saved.values()))) == {"param", "exp_avg", "exp_avg_sq"}

    metrics = tmp_path / "metrics.jsonl"
    launch_local(_plan(), TrainTask(_config(root, resume=True, metrics_path=str(metrics))))
    steps = sorted({json.loads(line)["step"] for line in metrics.read_text().splitlines()})
    assert steps == [1, 2]  # continued from the previous save, step 1
    assert read_manifest(latest_complete(root)).step == 3  # type: ignore[arg-type]
