"""What the data layer hands to algorithms, and what it needs from a model to make it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class ImageTextEncoder(Protocol):
    """The frozen encoders of a backbone, as the data layer sees them."""

    #: A string that changes whenever the encoders' weights or config change (cache key part).
    identity: str

    def encode_images(
        self, pixels: torch.Tensor, generators: list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] -> scaled VAE latents ``[B, C, H/f, W/f]``: the
        posterior mode, or one posterior sample per image drawn from ``generators``."""
        ...

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> per-sample text tensors, e.g. ``{"prompt_embeds": [B, L, D]}`` (+ pooled)."""
        ...


@dataclass
class PairBatch:
    """A batch of preference pairs, winner first, already in latent space.

    ``micro_cond`` is SDXL's micro-conditioning per sample: ``(orig_h, orig_w, crop_top,
    crop_left, target_h, target_w)``; SD1.5-family models ignore it.
    """

    latents_w: torch.Tensor
    latents_l: torch.Tensor
    text: dict[str, torch.Tensor]
    micro_cond: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    row_ids: list[int] = field(default_factory=list)
    #: the batch source's index of this micro-batch (None where a source does not say)
    index: int | None = None

    def __len__(self) -> int:
        return self.latents_w.shape[0]

    @staticmethod
    def cat(batches: list[PairBatch]) -> PairBatch:
        """One batch holding the pairs of ``batches`` in order (no index: it is none of them)."""
        return PairBatch(
            latents_w=torch.cat([b.latents_w for b in batches]),
            latents_l=torch.cat([b.latents_l for b in batches]),
            text={k: torch.cat([b.text[k] for b in batches]) for k in batches[0].text},
            micro_cond=torch.cat([b.micro_cond for b in batches]),
            prompts=[p for b in batches for p in b.prompts],
            row_ids=[r for b in batches for r in b.row_ids],
        )

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(
            latents_w=self.latents_w.to(device),
            latents_l=self.latents_l.to(device),
            text={k: v.to(device) for k, v in self.text.items()},
            micro_cond=self.micro_cond.to(device),
            prompts=self.prompts,
            row_ids=self.row_ids,
            index=self.index,
        )
