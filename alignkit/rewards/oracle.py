"""The tiny world's judge as a reward: exact (numpy) and differentiable (torch) versions."""

from __future__ import annotations

import numpy as np
import torch

from alignkit.rewards.registry import REWARDS
from alignkit.tinyworld import judge_scores
from alignkit.tinyworld.judge_torch import judge_scores_torch


@REWARDS.register("oracle")
class OracleReward:
    """The judge that labels the tiny world's pairs; what "aligned" means there."""

    differentiable = False

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        array = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return torch.from_numpy(np.asarray(judge_scores(array, prompts), dtype=np.float32))


@REWARDS.register("oracle_diff")
class DifferentiableOracleReward:
    """A smooth version of the judge for reward backpropagation."""

    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return judge_scores_torch(images, prompts)
