"""Algorithms register themselves on import; build one by ``algo.name``."""

from __future__ import annotations

from alignkit.algorithms import dpo, ncp, rpo, spo  # noqa: F401  (each registers its algorithms)
from alignkit.algorithms.registry import ALGORITHMS, Algorithm

__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm"]


def build_algorithm(cfg, backbone) -> Algorithm:
    return ALGORITHMS.get(cfg.name)(cfg, backbone)
