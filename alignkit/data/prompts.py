"""Prompt lists for online algorithms (SPO, DRTune): batches of prompts addressed by index.

Like ``PairBatches``, ``batch(i)`` depends only on ``i``: epoch ``i // batches_per_epoch``
visits the prompts in a permutation drawn from ``(seed, epoch)``, so a resumed run sees
exactly the prompts an uninterrupted one would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit import hub
from alignkit.config import DataConfig
from alignkit.data.general_prompts import GENERAL_PROMPTS
from alignkit.data.seeding import derived_generator

TINY_SPLITS = ("tiny_train", "tiny_heldout")
GENERAL = "general"


def load_prompt_list(spec: str) -> list[str]:
    """``tiny_train`` / ``tiny_heldout`` (the tiny world's splits), ``general`` (a dozen
    varied prompts for real models), a text file (one prompt a line), or a JSON list of
    prompts or of ``{"caption": ...}`` objects (the SPO authors' 4k_training_prompts.json),
    given as a local path or an ``https://`` URL (downloaded once)."""
    if spec in TINY_SPLITS:
        from alignkit.tinyworld import heldout_prompts, train_prompts

        return train_prompts() if spec == "tiny_train" else heldout_prompts()
    if spec == GENERAL:
        return list(GENERAL_PROMPTS)
    path = hub.resolve_file(spec, "data.path") if hub.is_url(spec) else Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"prompts {spec!r}: no such file; pass {', '.join((*TINY_SPLITS, GENERAL))}, a "
            "text file with one prompt a line, or a JSON list of prompts"
        )
    text = path.read_text()
    prompts = _json_prompts(text, path) if path.suffix == ".json" else text.splitlines()
    prompts = [prompt.strip() for prompt in prompts if prompt.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts (one prompt a line expected)")
    return prompts


def _json_prompts(text: str, path: Path) -> list[str]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"prompt file {path} is not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise ValueError(f"prompt file {path}: expected a JSON list, got {type(entries).__name__}")
    prompts = []
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("caption"), str):
            entry = entry["caption"]
        if not isinstance(entry, str):
            raise ValueError(
                f"prompt file {path}: entry {index} is neither a string nor an object with a "
                f"'caption' string: {entry!r}"
            )
        prompts.append(entry)
    return prompts


@dataclass
class PromptBatch:
    """A batch of prompts; what an online algorithm turns into samples and a loss."""

    prompts: list[str]
    indices: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> PromptBatch:
        return self


class PromptBatches:
    """Prompt micro-batches by global index, reshuffled each epoch; see the module doc."""

    def __init__(self, prompts: list[str], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if len(prompts) < batch_size:
            raise ValueError(
                f"{len(prompts)} prompts are fewer than one batch of {batch_size}; lower "
                "trainer.batch_size or give more prompts"
            )
        self.prompts = prompts
        self.batch_size = batch_size
        self.seed = seed

    @property
    def batches_per_epoch(self) -> int:
        return len(self.prompts) // self.batch_size

    def batch(self, index: int) -> PromptBatch:
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        epoch, offset = divmod(index, self.batches_per_epoch)
        order = torch.randperm(
            len(self.prompts), generator=derived_generator("prompts", self.seed, epoch)
        )
        picked = order[offset * self.batch_size : (offset + 1) * self.batch_size].tolist()
        return PromptBatch([self.prompts[i] for i in picked], picked)


def build_prompt_batches(cfg: DataConfig, batch_size: int, seed: int) -> PromptBatches:
    if cfg.kind != "prompts":
        raise ValueError(f"data.kind={cfg.kind!r}: prompt batches need data.kind='prompts'")
    if not cfg.path:
        raise ValueError("data.path is empty: pass tiny_train or a text file of prompts")
    prompts = load_prompt_list(cfg.path)
    if cfg.max_rows is not None:
        prompts = prompts[: cfg.max_rows]
    return PromptBatches(prompts, batch_size, seed)
