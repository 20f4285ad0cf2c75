"""Training data as resumable micro-batches: preference pairs (in latent space) or prompts."""

from __future__ import annotations

import torch

from alignkit.data.batch import ImageTextEncoder, PairBatch
from alignkit.data.batches import PairBatches, build_pair_batches
from alignkit.data.cache import CACHE_DIR_ENV, cache_root
from alignkit.data.corruption import CorruptDataError
from alignkit.data.prompts import PromptBatch, PromptBatches, build_prompt_batches, load_prompt_list
from alignkit.data.source import COLUMNS, DataSourceError, SchemaError, resolve_source
from alignkit.data.transforms import PairTransform, UndecodableImageError

__all__ = [
    "CACHE_DIR_ENV",
    "COLUMNS",
    "CorruptDataError",
    "DataSourceError",
    "ImageTextEncoder",
    "PairBatch",
    "PairBatches",
    "PairTransform",
    "PromptBatch",
    "PromptBatches",
    "SchemaError",
    "UndecodableImageError",
    "build_batches",
    "build_pair_batches",
    "build_prompt_batches",
    "cache_root",
    "load_prompt_list",
    "resolve_source",
]


def build_batches(
    cfg,
    encoder: ImageTextEncoder,
    resolution: int,
    batch_size: int,
    seed: int,
    device: torch.device | str | None = None,
    process_index: int = 0,
    num_processes: int = 1,
) -> PairBatches | PromptBatches:
    """The batch source for ``data.kind``: encoded preference pairs, or prompts.

    ``process_index`` of ``num_processes`` shares the latent cache build among processes.
    """
    if cfg.kind == "prompts":
        return build_prompt_batches(cfg, batch_size, seed)
    if cfg.kind == "pairs":
        return build_pair_batches(
            cfg, encoder, resolution, batch_size, seed, device, process_index, num_processes
        )
    raise ValueError(f"unknown data.kind={cfg.kind!r}; choose 'pairs' or 'prompts'")
