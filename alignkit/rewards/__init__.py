"""Reward models; each registers itself by name on import."""

from __future__ import annotations

from alignkit.rewards import clip, oracle, preference  # noqa: F401  (each registers its rewards)
from alignkit.rewards.registry import REWARDS, Reward

__all__ = ["REWARDS", "Reward", "build_reward"]


def build_reward(name: str) -> Reward:
    return REWARDS.get(name)()
