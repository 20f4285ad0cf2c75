"""Resumable checkpoints: tensors as safetensors, the rest as JSON, written atomically.

A checkpoint folder is first written under a temporary name and renamed into place only
once complete, so a crash mid-write never leaves a checkpoint that a resume would trust.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_PREFIX = "step_"
_STATE_FILE = "state.json"
_ALGORITHM_FILE = "algorithm.safetensors"
_EMA_FILE = "ema.safetensors"


@dataclass
class CheckpointContents:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    generator_state: torch.Tensor
    config: dict[str, Any]
    # an algorithm's own state across optimizer steps (e.g. SPO's waiting transitions)
    algorithm: dict[str, torch.Tensor] = field(default_factory=dict)
    # the moving average of the trainable weights (trainer.ema), by parameter name
    ema: dict[str, torch.Tensor] = field(default_factory=dict)


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


def save_checkpoint(root: str | Path, contents: CheckpointContents, keep: int) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically and keep only the newest ``keep`` of them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{contents.step:08d}"
    temporary = root / f".incomplete_{final.name}_{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    optimizer_tensors, optimizer_rest = _split_optimizer_state(contents.optimizer)
    rng_tensors, rng_rest = _rng_snapshot()
    rng_tensors["alignkit_generator"] = contents.generator_state
    save_file(
        {k: v.contiguous() for k, v in contents.trainable.items()},
        temporary / "trainable.safetensors",
    )
    save_file(optimizer_tensors, temporary / "optimizer.safetensors")
    save_file(rng_tensors, temporary / "rng.safetensors")
    if contents.algorithm:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in contents.algorithm.items()},
            temporary / _ALGORITHM_FILE,
        )
    if contents.ema:
        save_file({k: v.contiguous() for k, v in contents.ema.items()}, temporary / _EMA_FILE)
    state = {
        "step": contents.step,
        "optimizer": optimizer_rest,
        "lr_scheduler": contents.lr_scheduler,
        "rng": rng_rest,
        "config": contents.config,
    }
    (temporary / _STATE_FILE).write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if (p / _STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def load_checkpoint(folder: str | Path, restore_rng: bool = True) -> CheckpointContents:
    folder = Path(folder)
    state = json.loads((folder / _STATE_FILE).read_text())
    rng = load_file(folder / "rng.safetensors")
    if restore_rng:
        _restore_rng(rng, state["rng"])
    return CheckpointContents(
        step=state["step"],
        trainable=load_file(folder / "trainable.safetensors"),
        optimizer=_join_optimizer_state(
            load_file(folder / "optimizer.safetensors"), state["optimizer"]
        ),
        lr_scheduler=state["lr_scheduler"],
        generator_state=rng["alignkit_generator"],
        config=state["config"],
        algorithm=_load_if_present(folder / _ALGORITHM_FILE),
        ema=_load_if_present(folder / _EMA_FILE),
    )


def _load_if_present(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path) if path.is_file() else {}
