"""A CLIP style score for real models: how much closer an image sits to a text that names a
style than to a neutral text.

    score = cos(image, style_prompt) - cos(image, neutral_prompt)

with L2-normalised open_clip embeddings (``reward=clip_style reward.style_prompt="a van gogh
painting" reward.path=<open_clip folder>``). Subtracting the neutral text's cosine removes
what every image shares with any caption, so the score moves with the style rather than with
the content. Prompts are ignored; the CLIP is loaded as in ``alignkit.rewards.clip``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignkit.rewards.clip import ClipModel, load_clip
from alignkit.rewards.registry import REWARDS

DEFAULT_NEUTRAL_PROMPT = "an image"  # our choice: a caption that names no style


class ClipStyleReward:
    """``cos(image, style) - cos(image, neutral)`` ``[B]``, in [-2, 2]; differentiable."""

    differentiable = True

    def __init__(self, clip: ClipModel, style_prompt: str, neutral_prompt: str) -> None:
        self.clip = clip.eval().requires_grad_(False)
        with torch.no_grad():
            self.texts = clip.text_features([style_prompt, neutral_prompt])

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.clip.to(images.device)
        features = self.clip.image_features(images)
        cosines = features @ self.texts.to(features).T
        return cosines[:, 0] - cosines[:, 1]


def _checked_prompt(value: str | None, setting: str, example: str) -> str:
    if value is None or not str(value).strip():
        raise ValueError(f"reward=clip_style needs {setting}, e.g. {setting}={example!r}")
    return str(value)


@REWARDS.register("clip_style")
def clip_style(
    style_prompt: str | None = None,
    neutral_prompt: str | None = None,
    path: str | Path | None = None,
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
) -> ClipStyleReward:
    """The style score with any open_clip model (a folder, or a name plus a local checkpoint)."""
    style = _checked_prompt(style_prompt, "reward.style_prompt", "a van gogh painting")
    neutral = _checked_prompt(
        DEFAULT_NEUTRAL_PROMPT if neutral_prompt is None else neutral_prompt,
        "reward.neutral_prompt",
        DEFAULT_NEUTRAL_PROMPT,
    )
    clip = load_clip("reward=clip_style", path, model_name, checkpoint)
    return ClipStyleReward(clip, style, neutral)
