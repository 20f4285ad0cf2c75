"""Resumable checkpoints: tensors as safetensors, the rest as JSON, written atomically.

A checkpoint folder is first written under a staging name and renamed into place only once
complete and synced to disk, so a crash or a full disk mid-write never leaves a checkpoint
that a resume would trust, and never costs the previous one.

What all processes share (trainable weights, optimizer, lr schedule, config) is written once,
by the main process; under FSDP / DeepSpeed ZeRO the weights and optimizer are written as
each process's shard instead (``alignkit.sharding``). What each process keeps apart (its
random streams, the algorithm's carried state such as SPO's waiting transitions) goes to
``rank_<r>.safetensors`` and ``rank_<r>.json``, written by that process into the same
staging folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignkit.durable import fsync_path, fsync_tree

log = logging.getLogger(__name__)

_PREFIX = "step_"
_STAGING_PREFIX = ".incomplete_"
_STATE_FILE = "state.json"
_GENERATOR = "alignkit_generator"
_ALGORITHM_PREFIX = "algorithm."
_EMA_FILE = "ema.safetensors"
# single-process checkpoints written before per-rank state: rank 0's state lived here
_LEGACY_RNG_FILE = "rng.safetensors"
_LEGACY_ALGORITHM_FILE = "algorithm.safetensors"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a lost mount); the previous one stays."""


@dataclass
class CheckpointContents:
    """What every process shares: written once, by the main process."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    config: dict[str, Any]
    num_processes: int = 1
    # the moving average of the trainable weights (trainer.ema), by parameter name
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    # FSDP / ZeRO: weights and optimizer are in the processes' shards (alignkit.sharding),
    # not in ``trainable`` and ``optimizer``
    sharded: bool = False


@dataclass
class RankState:
    """What one process keeps apart from the others."""

    generator: torch.Tensor
    # an algorithm's own state across optimizer steps (e.g. SPO's waiting transitions)
    algorithm: dict[str, torch.Tensor] = field(default_factory=dict)


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of a torch optimizer state_dict go to safetensors, everything else to JSON."""
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _rng_snapshot() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    python_state = random.getstate()
    rest = {
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    return tensors, rest


def _restore_rng(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = rest["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))


def _final_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def staging_folder(root: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is assembled (one name that every process derives)."""
    return Path(root) / f"{_STAGING_PREFIX}{_final_name(step)}"


@contextlib.contextmanager
def _writing(root: Path, step: int) -> Iterator[None]:
    """Turn a failed write into one clear error and drop the partial staging folder."""
    try:
        yield
    except OSError as error:
        shutil.rmtree(staging_folder(root, step), ignore_errors=True)
        previous = list_checkpoints(root)
        fallback = f"its last checkpoint, {previous[-1].name}" if previous else "the start"
        raise CheckpointWriteError(
            f"could not write checkpoint {_final_name(step)} under {root}: "
            f"{error.strerror or error}; free disk space (or lower trainer.keep_checkpoints) "
            f"and re-run the same command: the run resumes from {fallback}"
        ) from error


def start_checkpoint(root: str | Path, step: int) -> Path:
    """Create an empty staging folder for ``step`` (main process, before the others write)."""
    root = Path(root)
    with _writing(root, step):
        root.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(root, step)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    return staging


def write_rank_state(root: str | Path, step: int, rank: int, state: RankState) -> None:
    """Write this process's random streams and algorithm state into the staging folder."""
    root = Path(root)
    staging = staging_folder(root, step)
    with _writing(root, step):
        tensors, rest = _rng_snapshot()
        tensors[_GENERATOR] = state.generator
        for name, value in state.algorithm.items():
            tensors[_ALGORITHM_PREFIX + name] = value.detach().cpu().contiguous()
        save_file(tensors, staging / f"rank_{rank}.safetensors")
        (staging / f"rank_{rank}.json").write_text(json.dumps(rest))


def publish_checkpoint(root: str | Path, contents: CheckpointContents, keep: int) -> Path:
    """Write the shared files, sync, rename the staging folder into place, prune old ones."""
    root = Path(root)
    staging = staging_folder(root, contents.step)
    final = root / _final_name(contents.step)
    with _writing(root, contents.step):
        optimizer_rest = None
        if not contents.sharded:
            optimizer_tensors, optimizer_rest = _split_optimizer_state(contents.optimizer)
            save_file(
                {k: v.contiguous() for k, v in contents.trainable.items()},
                staging / "trainable.safetensors",
            )
            save_file(optimizer_tensors, staging / "optimizer.safetensors")
        if contents.ema:
            save_file({k: v.contiguous() for k, v in contents.ema.items()}, staging / _EMA_FILE)
        state = {
            "step": contents.step,
            "num_processes": contents.num_processes,
            "sharded": contents.sharded,
            "optimizer": optimizer_rest,
            "lr_scheduler": contents.lr_scheduler,
            "config": contents.config,
        }
        (staging / _STATE_FILE).write_text(json.dumps(state, indent=1))
        fsync_tree(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_path(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(
    root: str | Path, contents: CheckpointContents, state: RankState, keep: int
) -> Path:
    """A single process's checkpoint: staging, its own state as rank 0, publishing."""
    start_checkpoint(root, contents.step)
    write_rank_state(root, contents.step, 0, state)
    return publish_checkpoint(root, contents, keep)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if (p / _STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """The settings a checkpoint was written with (reads only its small JSON file)."""
    return json.loads((Path(folder) / _STATE_FILE).read_text())["config"]


def load_checkpoint(folder: str | Path) -> CheckpointContents:
    """The shared part of a checkpoint; ``load_rank_state`` reads each process's own part."""
    folder = Path(folder)
    state = json.loads((folder / _STATE_FILE).read_text())
    sharded = state.get("sharded", False)
    return CheckpointContents(
        step=state["step"],
        trainable={} if sharded else load_file(folder / "trainable.safetensors"),
        optimizer={}
        if sharded
        else _join_optimizer_state(load_file(folder / "optimizer.safetensors"), state["optimizer"]),
        lr_scheduler=state["lr_scheduler"],
        config=state["config"],
        num_processes=state.get("num_processes", 1),
        ema=load_file(folder / _EMA_FILE) if (folder / _EMA_FILE).is_file() else {},
        sharded=sharded,
    )


def load_rank_state(folder: str | Path, rank: int, restore_rng: bool = True) -> RankState | None:
    """Process ``rank``'s saved state (and, with ``restore_rng``, its global random streams
    restored); None when the checkpoint holds nothing for that rank (it was written by fewer
    processes)."""
    folder = Path(folder)
    tensors_file, rest_file = folder / f"rank_{rank}.safetensors", folder / f"rank_{rank}.json"
    if tensors_file.is_file():
        tensors, rest = load_file(tensors_file), json.loads(rest_file.read_text())
    elif rank == 0 and (folder / _LEGACY_RNG_FILE).is_file():
        tensors = load_file(folder / _LEGACY_RNG_FILE)
        rest = json.loads((folder / _STATE_FILE).read_text())["rng"]
        if (folder / _LEGACY_ALGORITHM_FILE).is_file():
            legacy = load_file(folder / _LEGACY_ALGORITHM_FILE)
            tensors.update({_ALGORITHM_PREFIX + k: v for k, v in legacy.items()})
    else:
        return None
    if restore_rng:
        _restore_rng(tensors, rest)
    algorithm = {
        name[len(_ALGORITHM_PREFIX) :]: value
        for name, value in tensors.items()
        if name.startswith(_ALGORITHM_PREFIX)
    }
    return RankState(generator=tensors[_GENERATOR], algorithm=algorithm)
