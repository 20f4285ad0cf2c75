"""The image statistics the judge scores, written once for numpy arrays and torch tensors.

Only arithmetic, slicing, ``.sum`` and ``.clip`` are used, so the numpy oracle (hard masks)
and the differentiable torch judge (soft masks) measure shapes and edges the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

JUDGE_SIZE = 64  # the judge looks at 64x64 images; other sizes are resized first
BORDER = 2  # pixels of frame that estimate the background
TOP_PIXELS = 20  # the object's contrast level: mean distance of this many most distinct pixels
MASK_LEVEL = 0.5  # object = pixels at least this fraction of the contrast level from the bg
CORE_LEVEL = 0.75  # the object's colour is averaged over pixels above this fraction
EDGE_FLOOR = 0.15  # below this fraction a pixel counts as background noise for edge sharpness
EPS = 1e-12

Array = Any  # a numpy array or a torch tensor


@dataclass
class Measurements:
    """Per-image statistics, each with a leading batch dimension; colours in 0-255 units."""

    background: Array  # [B, 3] estimated background colour
    object_colour: Array  # [B, 3] mean colour of the object's core
    contrast_level: Array  # [B] distance of the most distinct pixels from the background
    area: Array  # [B] object area in pixels
    offset: Array  # [B] distance of the object's centroid from the image centre / image side
    descriptor: list[Array]  # 4 x [B]: spread, elongation, three-fold, four-fold symmetry
    sharpness: Array  # [B] mean slope of the object's edge, 1 / pixels


def measure(
    pixels: Array,
    background: Array,
    distance: Array,
    contrast_level: Array,
    mask: Array,
    core: Array,
    xs: Array,
    ys: Array,
) -> Measurements:
    """Statistics of a segmented batch: pixels [B, H, W, 3], the rest [B, H, W] or [B, 3].

    ``mask`` and ``core`` may be hard (0/1) or soft weights; ``xs``/``ys`` are pixel centres.
    """
    core_weight = core.sum((-2, -1)) + EPS
    object_colour = (core[..., None] * pixels).sum((-3, -2)) / core_weight[:, None]
    descriptor, area, (cx, cy) = moment_descriptor(mask, xs, ys)
    side = pixels.shape[-2]
    offset = ((cx - side / 2) ** 2 + (cy - side / 2) ** 2 + EPS) ** 0.5 / side
    ratio = distance / (contrast_level[:, None, None] + EPS)
    return Measurements(
        background=background,
        object_colour=object_colour,
        contrast_level=contrast_level,
        area=area,
        offset=offset,
        descriptor=descriptor,
        sharpness=edge_sharpness(edge_level(ratio)),
    )


def moment_descriptor(
    mask: Array, xs: Array, ys: Array
) -> tuple[list[Array], Array, tuple[Array, Array]]:
    """Rotation- and scale-invariant shape statistics of ``mask`` [B, H, W].

    With z the pixel position relative to the centroid (as a complex number), returns
    ``[spread, h2, h3, h4]`` where spread = 2 pi sum(m |z|^2) / area^2 (1 for a disk) and
    h_k = |sum(m z^k)| / sum(m |z|^k) (0 for a disk; k-fold symmetric shapes have only the
    harmonics that are multiples of k), plus the area and the centroid (x, y).
    """
    area = mask.sum((-2, -1))
    safe_area = area + EPS
    cx = (mask * xs).sum((-2, -1)) / safe_area
    cy = (mask * ys).sum((-2, -1)) / safe_area
    x, y = xs - cx[:, None, None], ys - cy[:, None, None]
    r2 = x * x + y * y
    spread = 2 * math.pi * (mask * r2).sum((-2, -1)) / safe_area**2
    re, im = x, y
    harmonics = []
    for k in (2, 3, 4):
        re, im = re * x - im * y, re * y + im * x
        norm = (mask * r2 ** (k / 2)).sum((-2, -1)) + EPS
        real, imag = (mask * re).sum((-2, -1)), (mask * im).sum((-2, -1))
        harmonics.append((real * real + imag * imag + EPS) ** 0.5 / norm)
    return [spread, *harmonics], area, (cx, cy)


def edge_sharpness(level: Array) -> Array:
    """Mean edge slope of ``level`` [B, H, W] (0 = background, 1 = object), gradient-weighted.

    sum|grad|^2 / sum|grad| does not depend on the edge's length: about 0.8 per pixel for a
    crisp anti-aliased edge, roughly 1 / (2 sigma sqrt(pi)) for an edge blurred by sigma.
    """
    gx = level[:, :-1, 1:] - level[:, :-1, :-1]
    gy = level[:, 1:, :-1] - level[:, :-1, :-1]
    squared = gx * gx + gy * gy
    return squared.sum((-2, -1)) / ((squared + EPS) ** 0.5).sum((-2, -1)).clip(1e-6, None)


def edge_level(distance_ratio: Array) -> Array:
    """Distance from the background as a fraction of the contrast level, noise floor removed."""
    return ((distance_ratio - EDGE_FLOOR) / (1.0 - 2 * EDGE_FLOOR)).clip(0.0, 1.0)
