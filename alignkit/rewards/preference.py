"""PickScore-style preference models: a CLIP whose scaled cosine ranks images of one prompt.

PickScore (Kirstain et al. 2023) fine-tunes CLIP on Pick-a-Pic pairs: the two images' scores
``logit_scale * cos(image, prompt)`` are logits of a softmax over the pair, trained with
cross-entropy against the human label distribution (a tie is 0.5/0.5). ``tiny_pickscore`` is
the tiny world's version, fine-tuned on judge-labelled pairs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignkit.rewards.clip import ClipModel
from alignkit.rewards.registry import REWARDS
from alignkit.tinyworld.assets import asset_path

LABEL_TOLERANCE = 1e-3


def preference_loss(
    scores_0: torch.Tensor,
    scores_1: torch.Tensor,
    labels_0: torch.Tensor,
    labels_1: torch.Tensor,
) -> torch.Tensor:
    """PickScore's loss: mean cross-entropy of softmax([s0, s1]) against [label_0, label_1]."""
    labels = torch.stack([labels_0, labels_1], dim=-1).to(scores_0.dtype)
    totals = labels.sum(-1)
    if labels.lt(0).any() or (totals - 1).abs().gt(LABEL_TOLERANCE).any():
        raise ValueError(
            f"labels must be non-negative and sum to 1 per pair (1/0, 0/1 or 0.5/0.5 for a "
            f"tie); got label_0={labels_0.tolist()}, label_1={labels_1.tolist()}"
        )
    logits = torch.stack([scores_0, scores_1], dim=-1)
    return -(labels * logits.log_softmax(-1)).sum(-1).mean()


@REWARDS.register("tiny_pickscore")
class PickScoreReward:
    """``logit_scale * cos(image, prompt)`` of a PickScore-style CLIP (default: the tiny one)."""

    differentiable = True

    def __init__(
        self, path: str | Path | None = None, checkpoint: str | Path | None = None
    ) -> None:
        self.clip = ClipModel.load(path or asset_path("pickscore"), checkpoint)
        self.clip.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.clip.to(images.device)
        return self.clip.score(images, prompts)
