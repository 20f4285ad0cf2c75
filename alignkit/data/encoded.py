"""One cache shard's pairs in latent space, as encoded and before they are written.

Prompts repeat across Pick-a-Pic rows (several image pairs per prompt), so text tensors are
kept once per distinct prompt of the shard and rows point at them through ``text_index``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncodedPairs:
    latents_w: torch.Tensor  # [N, C, h, w]
    latents_l: torch.Tensor  # [N, C, h, w]
    micro_cond: torch.Tensor  # [N, 6]
    text_index: torch.Tensor  # [N], into prompts and text
    prompts: list[str]  # distinct prompts
    text: dict[str, torch.Tensor]  # name -> [len(prompts), ...]
    row_ids: list[int]  # [N], source row ids

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
