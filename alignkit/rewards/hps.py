"""HPSv2 / HPSv2.1 (Wu et al. 2023, arXiv 2306.09341): open_clip ViT-H-14 fine-tuned on human
preferences; the score is the dot product of the normalised image and prompt features.

The checkpoint file (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``) holds the whole
model's weights, so only the architecture name and that file are needed. HPSv2's evaluation
transform resizes the longer side to 224 and pads the rest with black (``ResizeMaxSize``):
``resize_mode="longest"`` reproduces it (for square images it is a plain resize).
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignkit.rewards.clip import ClipModel, load_clip
from alignkit.rewards.registry import REWARDS

HPS_ARCHITECTURE = "ViT-H-14"


class HPSReward:
    """``cos(image, prompt)`` ``[B]`` of an HPS-tuned CLIP (about 0.2-0.35 on SD samples)."""

    differentiable = True

    def __init__(self, clip: ClipModel) -> None:
        clip.resize_mode = "longest"
        self.clip = clip.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.clip.to(images.device)
        return self.clip.cosine(images, prompts)


@REWARDS.register("hpsv2")
def hpsv2(
    checkpoint: str | Path | None = None,
    model_name: str = HPS_ARCHITECTURE,
    path: str | Path | None = None,
) -> HPSReward:
    """HPSv2 or v2.1 (whichever checkpoint file is given), or an open_clip folder ``path``."""
    if path is None and checkpoint is None:
        raise ValueError(
            "reward=hpsv2 needs the HPS checkpoint file: reward.checkpoint=/path/to/"
            "HPS_v2.1_compressed.pt (from the xswu/HPSv2 hub repo; nothing is downloaded here)"
        )
    name = None if path is not None else model_name
    return HPSReward(load_clip("reward=hpsv2", path, name, checkpoint))
