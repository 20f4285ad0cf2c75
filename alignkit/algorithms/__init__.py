"""Algorithms register themselves on import; build one by ``algo.name``."""

from __future__ import annotations

from alignkit.algorithms import (
    dpo,  # noqa: F401  (registers dpo, sft)
    spo,  # noqa: F401  (registers spo)
)
from alignkit.algorithms.registry import ALGORITHMS, Algorithm

__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm"]


def build_algorithm(cfg, backbone) -> Algorithm:
    return ALGORITHMS.get(cfg.name)(cfg, backbone)
