"""A weighted sum of rewards: ``reward=combo reward.weights={oracle_diff: 1.0, tiny_clip: 0.01}``.

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
    paths: Mapping[str, str] | None,
    build: Callable[..., Reward],
) -> WeightedRewards:
    """Each named part built by ``build(name, path=...)`` (its own path, if ``paths`` has one)."""
    if not isinstance(weights, Mapping) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights.values()
    ):
        raise ValueError(
            f"reward.weights must map reward names to numbers, e.g. {{oracle_diff:1.0}}; "
            f"got {weights!r}"
        )
    paths = dict(paths or {})
    if "combo" in weights:
        raise ValueError("reward.weights cannot name combo itself")
    unused = sorted(set(paths) - set(weights))
    if unused:
        raise ValueError(f"reward.paths names {unused}, which reward.weights does not weigh")
    parts = {}
    for name, weight in weights.items():
        options = {"path": paths[name]} if name in paths else {}
        parts[name] = (float(weight), build(name, **options))
    return WeightedRewards(parts)


@REWARDS.register("combo")
def combo(
    weights: Mapping[str, float] | None = None, paths: Mapping[str, str] | None = None
) -> WeightedRewards:
    from alignkit.rewards import build_reward

    return build_weighted(weights or {}, paths, build_reward)
