"""Signed distance functions of the tiny world's shapes (pixels; negative inside).

Every shape is sized by its circumradius, so ``radius`` is how far the shape reaches from
its centre and a shape of radius r always fits in a circle of radius r. Exact distances
(not just the zero level set) matter because the renderer blurs edges by the distance.
"""

from __future__ import annotations

import math

import numpy as np

CROSS_ARM_LENGTH = 3.0  # the cross is a plus sign whose arms are 3 arm-widths long


def signed_distance(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Distance to the boundary of ``shape`` centred at the origin, in the shape's own frame."""
    if shape == "circle":
        return np.hypot(x, y) - radius
    if shape == "square":
        half_side = radius / math.sqrt(2.0)
        return _box(x, y, half_side, half_side)
    if shape == "triangle":
        return _convex_polygon(x, y, _regular_polygon(3, radius))
    if shape == "cross":
        width = radius / math.hypot(CROSS_ARM_LENGTH / 2, 0.5)
        long, short = CROSS_ARM_LENGTH * width / 2, width / 2
        return np.minimum(_box(x, y, long, short), _box(x, y, short, long))
    raise ValueError(f"no signed distance function for shape {shape!r}")


def _box(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside


def _regular_polygon(corners: int, radius: float) -> np.ndarray:
    """Corner coordinates ``[corners, 2]``, counter-clockwise, the first one straight up."""
    angles = -math.pi / 2 + 2 * math.pi * np.arange(corners) / corners
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _convex_polygon(x: np.ndarray, y: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Exact distance to the nearest edge, negative where the point is inside every edge."""
    distance = np.full(np.broadcast(x, y).shape, np.inf)
    inside = np.ones(distance.shape, dtype=bool)
    for start, end in zip(corners, np.roll(corners, -1, axis=0)):
        edge = end - start
        px, py = x - start[0], y - start[1]
        along = np.clip((px * edge[0] + py * edge[1]) / (edge @ edge), 0.0, 1.0)
        distance = np.minimum(distance, np.hypot(px - along * edge[0], py - along * edge[1]))
        inside &= edge[0] * py - edge[1] * px >= 0
    return np.where(inside, -distance, distance)
