"""The tiny world's style scores as rewards (``alignkit.tinyworld.styles``): exact pixel
statistics, differentiable, prompts ignored.

``reward=tiny_style reward.style=winter`` picks a style by option; ``style_sketch``,
``style_winter`` and ``style_stripes`` name one each, for lists such as ``eval.rewards``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignkit.rewards.registry import REWARDS
from alignkit.tinyworld.styles import STYLES, get_style, style_score


class TinyStyleReward:
    """How strongly each image shows one procedural style (its exact style score)."""

    differentiable = True

    def __init__(self, style: str) -> None:
        self.style = get_style(style, setting="reward.style").name

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return style_score(self.style, images.float())


@REWARDS.register("tiny_style")
def tiny_style(style: str | None = None) -> TinyStyleReward:
    """The style score that ``reward.style`` names."""
    if style is None:
        raise ValueError(f"reward=tiny_style needs reward.style=<{' | '.join(STYLES)}>")
    return TinyStyleReward(style)


def _one_style(style: str) -> Callable[[], TinyStyleReward]:
    def build() -> TinyStyleReward:
        return TinyStyleReward(style)

    build.__doc__ = f"The {style} style score ({STYLES[style].description})."
    return build


for _style in STYLES:
    REWARDS.register(f"style_{_style}")(_one_style(_style))
