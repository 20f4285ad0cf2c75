"""Low-level rewards defined on the pixels alone: the kind DRTune's paper says shallow methods
(last-K truncation, ReFL) fail to optimise, because the layout of an image is decided in the
early sampling steps. Prompts are ignored; both work at any resolution.
"""

from __future__ import annotations

import torch

from alignkit.rewards.preprocess import check_images
from alignkit.rewards.registry import REWARDS


@REWARDS.register("symmetry")
class SymmetryReward:
    """``-mean |x - flip_lr(x)|`` in [-1, 0]: 0 for a left-right mirror-symmetric image."""

    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images)
        return -(images - images.flip(-1)).abs().flatten(1).mean(1)


@REWARDS.register("left_bright")
class LeftBrightReward:
    """Mean brightness of the left half minus that of the right half, in [-1, 1]."""

    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images)
        half = images.shape[-1] // 2
        brightness = images.mean(1)
        return brightness[..., :half].flatten(1).mean(1) - brightness[..., -half:].flatten(1).mean(
            1
        )
