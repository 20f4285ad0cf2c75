"""A whole dataset already in latent space, held in memory and gathered into batches.

Prompts repeat across Pick-a-Pic rows (several image pairs per prompt), so text tensors are
kept once per distinct prompt and rows point at them through ``text_index``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.data.batch import PairBatch


@dataclass
class EncodedPairs:
    latents_w: torch.Tensor  # [N, C, h, w]
    latents_l: torch.Tensor  # [N, C, h, w]
    micro_cond: torch.Tensor  # [N, 6]
    text_index: torch.Tensor  # [N], into prompts and text
    prompts: list[str]  # distinct prompts
    text: dict[str, torch.Tensor]  # name -> [len(prompts), ...]
    empty_text: dict[str, torch.Tensor]  # name -> [1, ...]: the encoding of ""
    row_ids: list[int]  # [N], source row ids
    # the latent cache folder these came from, if any: derived caches (e.g. RPO's CLIP
    # embeddings) are stored beside it, so they are keyed by everything the latents are
    cache_folder: Path | None = None

    def __post_init__(self) -> None:
        rows = {
            "latents_w": len(self.latents_w),
            "latents_l": len(self.latents_l),
            "micro_cond": len(self.micro_cond),
            "text_index": len(self.text_index),
            "row_ids": len(self.row_ids),
        }
        if len(set(rows.values())) != 1:
            raise ValueError(f"encoded pairs disagree on their number of rows: {rows}")
        texts = {name: len(value) for name, value in self.text.items()}
        if any(count != len(self.prompts) for count in texts.values()):
            raise ValueError(f"{len(self.prompts)} prompts but text tensors of {texts} rows")

    @property
    def num_pairs(self) -> int:
        return len(self.row_ids)

    def gather(self, positions: list[int], epoch: int) -> PairBatch:
        """The pairs at ``positions`` (the epoch does not matter: views were fixed once)."""
        index = torch.tensor(positions, dtype=torch.long)
        text_rows = self.text_index[index]
        return PairBatch(
            latents_w=self.latents_w[index],
            latents_l=self.latents_l[index],
            text={name: value[text_rows] for name, value in self.text.items()},
            micro_cond=self.micro_cond[index],
            prompts=[self.prompts[row] for row in text_rows.tolist()],
            row_ids=[self.row_ids[position] for position in positions],
        )
