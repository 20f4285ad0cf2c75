"""Prompt lists for online algorithms (SPO, DRTune): batches of prompts addressed by index.

Like ``PairBatches``, ``batch(i)`` depends only on ``i``: epoch ``i // batches_per_epoch``
visits the prompts in a permutation drawn from ``(seed, epoch)``, so a resumed run sees
exactly the prompts an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.config import DataConfig
from alignkit.data.general_prompts import GENERAL_PROMPTS
from alignkit.data.seeding import derived_generator

TINY_SPLITS = ("tiny_train", "tiny_heldout")
GENERAL = "general"


def load_prompt_list(spec: str) -> list[str]:
    """``tiny_train`` / ``tiny_heldout`` (the tiny world's splits), ``general`` (a dozen
    varied prompts for real models) or a text file, one prompt a line."""
    if spec in TINY_SPLITS:
        from alignkit.tinyworld import heldout_prompts, train_prompts

        return train_prompts() if spec == "tiny_train" else heldout_prompts()
    if spec == GENERAL:
        return list(GENERAL_PROMPTS)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"prompts {spec!r}: no such file; pass {', '.join((*TINY_SPLITS, GENERAL))} or a "
            "text file with one prompt a line"
        )
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts (one prompt a line expected)")
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
