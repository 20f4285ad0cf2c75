"""Algorithms register themselves on import; build one by ``algo.name``."""

from __future__ import annotations

from alignkit.algorithms import dpo, drtune, ncp, rpo, spo  # noqa: F401  (each registers)
from alignkit.algorithms.registry import ALGORITHMS, Algorithm

__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm", "needs_reward"]


def needs_reward(name: str) -> bool:
    """Whether ``algo=name`` optimises a reward model (declared by ``needs_reward = True``)."""
    return bool(getattr(ALGORITHMS.get(name), "needs_reward", False))


def build_algorithm(cfg, backbone, reward=None) -> Algorithm:
    """``reward`` (the built ``reward`` group) goes to algorithms that declare they need one."""
    if not needs_reward(cfg.name):
        return ALGORITHMS.get(cfg.name)(cfg, backbone)
    if reward is None:
        raise ValueError(
            f"algo={cfg.name} optimises a reward but none is configured (reward=none); pick "
            "one, e.g. reward=oracle_diff on the tiny world or reward=pickscore "
            "reward.path=/models/PickScore_v1"
        )
    if not getattr(reward, "differentiable", False):
        raise ValueError(
            f"algo={cfg.name} backpropagates through the reward, but {type(reward).__name__} "
            "is not differentiable; use e.g. reward=oracle_diff instead of reward=oracle"
        )
    return ALGORITHMS.get(cfg.name)(cfg, backbone, reward)
