"""A differentiable stand-in for the judge, for reward-gradient methods and analysis.

The same formula (``judge.score_terms``) on the same statistics (``features.measure``), with
the hard thresholds replaced by sigmoids of the distance to the background, so that the score
has gradients with respect to every pixel. It ranks images like the numpy oracle but is not
identical to it; the oracle stays the source of labels.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from alignkit.tinyworld import features
from alignkit.tinyworld.features import Measurements
from alignkit.tinyworld.judge import Prompts, ideal_shapes, prompt_targets, score_terms

MASK_TEMPERATURE = 0.03  # sigmoid width, as a fraction of the contrast level


def measure_torch(images: torch.Tensor) -> Measurements:
    """Soft-mask measurements of ``[B, 3, 64, 64]`` images in 0-255 units."""
    pixels = images.permute(0, 2, 3, 1)
    b, batch = features.BORDER, len(images)
    strips = [pixels[:, :b], pixels[:, -b:], pixels[:, b:-b, :b], pixels[:, b:-b, -b:]]
    frame = torch.cat([strip.reshape(batch, -1, 3) for strip in strips], dim=1)
    background = frame.median(dim=1).values
    offset = pixels - background[:, None, None]
    distance = ((offset * offset).sum(-1) + 1e-6).sqrt()
    level = distance.reshape(batch, -1).topk(features.TOP_PIXELS, dim=1).values.mean(1)
    ratio = distance / level[:, None, None]
    centres = torch.arange(pixels.shape[2], dtype=pixels.dtype, device=pixels.device) + 0.5
    return features.measure(
        pixels,
        background,
        distance,
        level,
        mask=torch.sigmoid((ratio - features.MASK_LEVEL) / MASK_TEMPERATURE),
        core=torch.sigmoid((ratio - features.CORE_LEVEL) / MASK_TEMPERATURE),
        xs=centres[None, :],
        ys=centres[:, None],
    )


@functools.cache
def shape_prototypes_torch() -> np.ndarray:
    """Descriptor ``[len(SHAPES), 4]`` of each ideal shape, as the soft masks measure it."""
    pixels = torch.tensor(ideal_shapes(), dtype=torch.float64).permute(0, 3, 1, 2)
    with torch.no_grad():
        prototypes = torch.stack(measure_torch(pixels).descriptor, dim=1).numpy()
    prototypes.setflags(write=False)
    return prototypes


def judge_breakdown_torch(images: torch.Tensor, prompts: Prompts) -> dict[str, torch.Tensor]:
    """Every term of the judge's formula, differentiably; images ``[B, 3, H, W]`` in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    side = features.JUDGE_SIZE
    pixels = images.float()
    if pixels.shape[-2:] != (side, side):
        pixels = F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True)
    targets = prompt_targets(prompts, shape_prototypes_torch())
    targets = [torch.as_tensor(t, dtype=pixels.dtype, device=pixels.device) for t in targets]
    return score_terms(measure_torch(pixels * 255.0), *targets)


def judge_scores_torch(images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
    """The differentiable score ``[B]``; images ``[B, 3, H, W]`` in [0, 1]."""
    return judge_breakdown_torch(images, prompts)["score"]
