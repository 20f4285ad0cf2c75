"""Checkpoint files: per-process state, the single-process layout of earlier versions, data
synced before a rename publishes it, and a full disk that costs nothing already saved."""

import errno
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import alignkit.checkpoint as checkpoint
import alignkit.durable as durable
from alignkit.checkpoint import (
    CheckpointContents,
    CheckpointWriteError,
    RankState,
    list_checkpoints,
    load_checkpoint,
    load_rank_state,
    publish_checkpoint,
    start_checkpoint,
    write_rank_state,
)
from tests.model_helpers import tiny_backbone, tiny_trainer


def _fit(run_dir, max_steps, **overrides):
    backbone = tiny_backbone()
    trainer = tiny_trainer(backbone, run_dir, max_steps=max_steps, **overrides)
    trainer.resume()
    trainer.fit([])
    return backbone.trainable_state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _contents(step=3, processes=2):
    return CheckpointContents(
        step=step,
        trainable={"w": torch.arange(4.0)},
        optimizer={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        lr_scheduler={"last_epoch": step},
        config={"seed": 0},
        num_processes=processes,
    )


def test_each_process_gets_back_its_own_random_streams_and_algorithm_state(tmp_path):
    start_checkpoint(tmp_path, 3)
    for rank, seed in ((0, 10), (1, 20)):
        torch.manual_seed(seed)  # the process's global stream at save time
        generator = torch.Generator().manual_seed(seed + 1)
        waiting = {"transitions": torch.full((2,), float(rank))}
        write_rank_state(tmp_path, 3, rank, RankState(generator.get_state(), waiting))
    folder = publish_checkpoint(tmp_path, _contents(), keep=2)
    assert load_checkpoint(folder).num_processes == 2

    for rank, seed in ((1, 20), (0, 10)):
        torch.manual_seed(999)
        own = load_rank_state(folder, rank)
        assert torch.equal(
            torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(seed))
        )
        mine = torch.Generator()
        mine.set_state(own.generator)
        expected = torch.rand(2, generator=torch.Generator().manual_seed(seed + 1))
        assert torch.equal(torch.rand(2, generator=mine), expected)
        assert own.algorithm["transitions"].tolist() == [float(rank)] * 2
    assert load_rank_state(folder, 2) is None  # written by two processes only


def _to_earlier_layout(folder):
    """Rewrite a checkpoint as versions before per-process state wrote it: rank 0's random
    streams in rng.safetensors and state.json, its algorithm state in algorithm.safetensors."""
    tensors = load_file(folder / "rank_0.safetensors")
    algorithm = {k[len("algorithm.") :]: v for k, v in tensors.items() if "algorithm." in k}
    save_file(
        {k: v for k, v in tensors.items() if "algorithm." not in k}, folder / "rng.safetensors"
    )
    if algorithm:
        save_file(algorithm, folder / "algorithm.safetensors")
    state = json.loads((folder / "state.json").read_text())
    state["rng"] = json.loads((folder / "rank_0.json").read_text())
    del state["num_processes"]
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "rank_0.safetensors").unlink()
    (folder / "rank_0.json").unlink()


def test_a_single_process_checkpoint_of_the_earlier_layout_still_resumes(tmp_path):
    uninterrupted = _fit(tmp_path / "a", 4, checkpoint_every=2)
    _fit(tmp_path / "b", 2, checkpoint_every=2)
    (saved,) = list_checkpoints(tmp_path / "b" / "checkpoints")
    _to_earlier_layout(saved)
    assert load_checkpoint(saved).num_processes == 1
    _assert_same_weights(uninterrupted, _fit(tmp_path / "b", 4, checkpoint_every=2))

    start_checkpoint(tmp_path / "c", 1)
    state = RankState(torch.Generator().get_state(), {"queue": torch.ones(3)})
    write_rank_state(tmp_path / "c", 1, 0, state)
    folder = publish_checkpoint(tmp_path / "c", _contents(1, 1), keep=1)
    _to_earlier_layout(folder)
    assert load_rank_state(folder, 0).algorithm["queue"].tolist() == [1.0, 1.0, 1.0]


def test_disk_full_mid_checkpoint_is_one_clear_error_and_the_previous_one_resumes(
    tmp_path, monkeypatch
):
    uninterrupted = _fit(tmp_path / "a", 4, checkpoint_every=2)
    trainer = tiny_trainer(
        tiny_backbone(), tmp_path / "b", max_steps=4, checkpoint_every=2, keep_checkpoints=1
    )
    real_save = checkpoint.save_file

    def save_until_the_disk_fills(tensors, path):
        if trainer.step == 4 and path.name == "optimizer.safetensors":
            path.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", save_until_the_disk_fills)
    with pytest.raises(CheckpointWriteError) as failure:
        trainer.fit([])
    message = str(failure.value)
    assert "could not write checkpoint step_00000004" in message
    assert "No space left on device" in message and "resumes from its last checkpoint" in message
    assert "step_00000002" in message
    root = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]  # no partial folder left
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    _assert_same_weights(uninterrupted, _fit(tmp_path / "b", 4, checkpoint_every=2))


def _record_syncs_and_renames(monkeypatch):
    """Log, in order, every fsync (by the path it synced) and every os.replace."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("sync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(("rename", str(source)))
        real_replace(source, target)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    return events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads fd paths from /proc")
def test_checkpoint_files_are_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = _record_syncs_and_renames(monkeypatch)
    root = tmp_path / "checkpoints"
    staging = start_checkpoint(root, 5)
    write_rank_state(root, 5, 0, RankState(torch.Generator().get_state()))
    final = publish_checkpoint(root, _contents(5, 1), keep=1)
    renamed = events.index(("rename", str(staging)))
    synced_before = {path for kind, path in events[:renamed] if kind == "sync"}
    files = {str(staging / p.name) for p in final.iterdir()}
    assert files | {str(staging)} <= synced_before
    assert ("sync", str(root)) in events[renamed:]
