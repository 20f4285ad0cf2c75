"""The base model's side of an evaluation, computed once per process and reused.

Every run of a sweep compares its aligned model with the same base model on the same prompts
and seeds, and Hydra runs a sweep's jobs one after another in one process: the base samples
and their scores come out the same each time, and cost half of every evaluation. They are
kept, keyed by the evaluation settings and a probe of the base model (one two-step sample,
compared bit for bit), so a run whose base differs (another model, dtype or device) computes
its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from alignkit.models import Backbone
from alignkit.rewards.registry import Reward
from alignkit.sampling import generate_images


@dataclass(frozen=True)
class BaseSide:
    """The base model's scores per reward, and the samples the image grid shows."""

    scores: dict[str, torch.Tensor]
    grid_images: torch.Tensor


_KEPT: dict[tuple, BaseSide] = {}


def base_probe(backbone: Backbone, prompt: str, guidance: float) -> str:
    """A digest of one short base sample: any change to the base model changes it."""
    image = generate_images(backbone, [prompt], [0], steps=2, guidance=guidance, reference=True)
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def base_side(
    backbone: Backbone,
    prompts: list[str],
    seeds: list[int],
    settings: dict,
    rewards: dict[str, Reward],
    grid_indices: list[int],
) -> BaseSide:
    """Sample and score the base model, or return what an earlier identical call computed."""
    key = (
        base_probe(backbone, prompts[0], settings["guidance"]),
        tuple(prompts),
        tuple(seeds),
        tuple(sorted(settings.items())),
        tuple(rewards),
        tuple(grid_indices),
    )
    if key not in _KEPT:
        images = generate_images(backbone, prompts, seeds, reference=True, **settings)
        scores = {name: reward(images, prompts).float() for name, reward in rewards.items()}
        _KEPT[key] = BaseSide(scores, images[grid_indices])
    return _KEPT[key]
