"""A weighted sum of rewards: ``reward=combo reward.weights={oracle_diff: 1.0, tiny_clip: 0.01}``;
parts that need settings get them from ``reward.options={pickscore: {path: /models/ps}}``.

Scales differ by orders of magnitude between rewards (PickScore ~20, HPS ~0.3, CLIPScore
~30), so the weights are the user's to set; nothing is normalised behind their back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from alignkit.rewards.registry import REWARDS, Reward


class WeightedRewards:
    """``sum_i w_i r_i(images, prompts)``; differentiable iff every part is."""

    def __init__(self, parts: Mapping[str, tuple[float, Reward]]) -> None:
        if not parts:
            raise ValueError(
                "reward=combo needs reward.weights, e.g. reward.weights={oracle_diff:1.0,"
                "tiny_clip:0.01}"
            )
        self.parts = dict(parts)
        self.differentiable = all(r.differentiable for _, r in self.parts.values())

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        total = torch.zeros(len(images), device=images.device)
        for weight, reward in self.parts.values():
            total = total + weight * reward(images, prompts).float().to(images.device)
        return total


def build_weighted(
    weights: Mapping[str, float],
    options: Mapping[str, Mapping[str, str]] | None,
    build: Callable[..., Reward],
) -> WeightedRewards:
    """Each named part built by ``build(name, **options[name])``."""
    if not isinstance(weights, Mapping) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights.values()
    ):
        raise ValueError(
            f"reward.weights must map reward names to numbers, e.g. {{oracle_diff:1.0}}; "
            f"got {weights!r}"
        )
    options = dict(options or {})
    if "combo" in weights:
        raise ValueError("reward.weights cannot name combo itself")
    unused = sorted(set(options) - set(weights))
    if unused:
        raise ValueError(f"reward.options names {unused}, which reward.weights does not weigh")
    parts = {}
    for name, weight in weights.items():
        settings = options.get(name) or {}
        if not isinstance(settings, Mapping):
            raise ValueError(
                f"reward.options.{name} must map settings to values, e.g. {{path: /models/x}}; "
                f"got {settings!r}"
            )
        parts[name] = (float(weight), build(name, **dict(settings)))
    return WeightedRewards(parts)


@REWARDS.register("combo")
def combo(
    weights: Mapping[str, float] | None = None,
    options: Mapping[str, Mapping[str, str]] | None = None,
) -> WeightedRewards:
    from alignkit.rewards import build_reward

    return build_weighted(weights or {}, options, build_reward)
