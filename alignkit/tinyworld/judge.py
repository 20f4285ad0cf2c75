"""The tiny world's judge: a deterministic analytic oracle standing in for human raters.

    score    = fidelity * (0.5 + 0.5 * taste)                        in [0, 1]
    fidelity = presence * colour * shape * background                each in [0, 1]
    taste    = (size + centring + crispness + contrast) / 4          each in [0, 1]

Fidelity gates the score: an image without the prompted object scores near 0, a faithful
one at least 0.5, and the taste orders faithful images. The taste is what the renderer's
base distribution does not already have: large, centred, crisp, high-contrast objects.

Segmentation (colours in 0-255 units, images resized to 64x64): the background ``bg`` is the
per-channel median of the 2-pixel border; ``d`` is each pixel's RGB distance from it; the
contrast level ``L`` is the mean of the 20 largest ``d``; the object mask is ``d > 0.5 L`` and
its core ``d > 0.75 L``, whose mean colour is the object colour ``o``.
``ramp(x; a, b)`` rises linearly from 0 at a to 1 at b.

- presence   = ramp(L; 20, 40) * ramp(area in pixels; 8, 24)
- colour     = exp(-max(0, 1 - cos t - 0.015) / 0.04), t the angle between ``o - bg`` and
  ``c - bg`` for the prompted colour c: 1 up to 10 degrees, 0.32 at 20, < 0.02 at 35
- shape      = exp(-(max(0, D - 0.05) / 0.12)^2), D the distance of the mask's descriptor
  ``(2 spread, h2, h3, h4)`` (``features.moment_descriptor``) from the prompted shape's,
  measured on an ideal render; the shapes' descriptors are >= 0.36 apart
- background = exp(-(max(0, |bg - prompted background| - 25) / 30)^2)
- size       = ramp(sqrt(area / image area); 0.1, 0.6)
- centring   = ramp(centroid distance from the image centre / side; 0.35, 0)
- crispness  = ramp(edge sharpness; 0.25, 0.75), the gradient-weighted mean slope of
  ``clip((d / L - 0.15) / 0.7, 0, 1)``: ~0.8 for crisp edges, ~0.2 for a 2.5-pixel blur
- contrast   = ramp(alpha; 0.4, 0.95), alpha = (o - bg).(c - bg) / |c - bg|^2, how far
  the object gets from the background towards the prompted colour

``fidelity_ok`` is the yes/no question "are the prompted shape and colour there?": presence
>= 0.5, the prompted colour is the palette's closest in angle and within 20 degrees, and
the prompted shape's descriptor is the nearest and closer than 0.2.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from alignkit.tinyworld import features
from alignkit.tinyworld.features import Array, Measurements
from alignkit.tinyworld.grammar import COLOURS, SHAPES, PromptSpec, as_spec
from alignkit.tinyworld.render import Variation, draw

DESCRIPTOR_WEIGHTS = (2.0, 1.0, 1.0, 1.0)
COLOUR_SLACK, COLOUR_SCALE = 0.015, 0.04
SHAPE_SLACK, SHAPE_SCALE = 0.05, 0.12
BACKGROUND_SLACK, BACKGROUND_SCALE = 25.0, 30.0
OK_PRESENCE, OK_COLOUR_DEGREES, OK_SHAPE_DISTANCE = 0.5, 20.0, 0.2
CHUNK = 256
TASTE_TERMS = ("size", "centring", "crispness", "contrast")
FIDELITY_TERMS = ("presence", "colour", "shape", "background")

Prompts = Sequence[str | PromptSpec]


def ramp(x: Array, start: float, end: float) -> Array:
    """0 at ``start``, 1 at ``end``, linear between (``end < start`` ramps down)."""
    return ((x - start) / (end - start)).clip(0.0, 1.0)


def _exp(x: Array) -> Array:
    return x.exp() if hasattr(x, "exp") else np.exp(x)


def _norm(x: Array) -> Array:
    return ((x * x).sum(-1) + features.EPS) ** 0.5


def _cosine(u: Array, v: Array) -> Array:
    return (u * v).sum(-1) / (_norm(u) * _norm(v))


def descriptor_distance(descriptor: list[Array], prototype: Array) -> Array:
    """Weighted Euclidean distance of per-image descriptors to prototypes ``[B, 4]``."""
    squared = sum(
        (weight * (value - prototype[:, k])) ** 2
        for k, (weight, value) in enumerate(zip(DESCRIPTOR_WEIGHTS, descriptor))
    )
    return (squared + features.EPS) ** 0.5


def score_terms(
    measured: Measurements, colour: Array, background: Array, prototype: Array
) -> dict[str, Array]:
    """The formula of the module docstring, for numpy or torch; prompt targets are ``[B, k]``."""
    towards = colour - measured.background
    reached = measured.object_colour - measured.background
    misfit = 1.0 - _cosine(reached, towards) - COLOUR_SLACK
    shape_misfit = descriptor_distance(measured.descriptor, prototype) - SHAPE_SLACK
    background_misfit = _norm(measured.background - background) - BACKGROUND_SLACK
    alpha = (reached * towards).sum(-1) / (towards * towards).sum(-1)
    side = features.JUDGE_SIZE
    terms = {
        "presence": ramp(measured.contrast_level, 20.0, 40.0) * ramp(measured.area, 8.0, 24.0),
        "colour": _exp(-misfit.clip(0.0, None) / COLOUR_SCALE),
        "shape": _exp(-((shape_misfit.clip(0.0, None) / SHAPE_SCALE) ** 2)),
        "background": _exp(-((background_misfit.clip(0.0, None) / BACKGROUND_SCALE) ** 2)),
        "size": ramp((measured.area / side**2) ** 0.5, 0.1, 0.6),
        "centring": ramp(measured.offset, 0.35, 0.0),
        "crispness": ramp(measured.sharpness, 0.25, 0.75),
        "contrast": ramp(alpha, 0.4, 0.95),
    }
    fidelity = math.prod(terms[name] for name in FIDELITY_TERMS)
    taste = sum(terms[name] for name in TASTE_TERMS) / len(TASTE_TERMS)
    terms.update(fidelity=fidelity, taste=taste, score=fidelity * (0.5 + 0.5 * taste))
    return terms


def prompt_targets(
    prompts: Prompts, prototypes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompted colour ``[B, 3]``, background ``[B, 3]`` and shape descriptor ``[B, 4]``."""
    specs = [as_spec(p) for p in prompts]
    return (
        np.array([s.colour_rgb for s in specs], float),
        np.array([s.background_rgb for s in specs], float),
        np.stack([prototypes[SHAPES.index(s.shape)] for s in specs]),
    )


@functools.cache
def ideal_shapes() -> np.ndarray:
    """A large, centred, crisp render of each shape, in ``SHAPES`` order: the prototypes."""
    side = features.JUDGE_SIZE
    centre = (side / 2, side / 2)
    ideal = Variation(centre, radius=0.4 * side, angle=0.3, edge_blur=0.0, washout=0.0)
    images = np.stack([draw(PromptSpec(shape, "red", "black"), ideal, side) for shape in SHAPES])
    images.setflags(write=False)
    return images


@functools.cache
def shape_prototypes() -> np.ndarray:
    """Descriptor ``[len(SHAPES), 4]`` of each ideal shape, as the numpy judge measures it."""
    prototypes = np.stack(measure_numpy(ideal_shapes()).descriptor, axis=1)
    prototypes.setflags(write=False)
    return prototypes


def as_hwc_uint8(images: Any) -> np.ndarray:
    """uint8 ``[B, H, W, 3]`` from uint8 HWC arrays or float [0, 1] arrays/tensors (CHW or HWC)."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.shape[-1] != 3 and images.shape[1] == 3:
        images = images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    side = features.JUDGE_SIZE
    if images.shape[1:3] != (side, side):
        images = np.stack(
            [
                np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.BILINEAR))
                for im in images
            ]
        )
    return images


def measure_numpy(images: np.ndarray) -> Measurements:
    """Hard-mask measurements of uint8 ``[B, 64, 64, 3]`` images."""
    pixels = images.astype(np.float64)
    b = features.BORDER
    strips = [pixels[:, :b], pixels[:, -b:], pixels[:, b:-b, :b], pixels[:, b:-b, -b:]]
    frame = np.concatenate([strip.reshape(len(pixels), -1, 3) for strip in strips], axis=1)
    background = np.median(frame, axis=1)
    distance = np.linalg.norm(pixels - background[:, None, None], axis=-1)
    flat = distance.reshape(len(pixels), -1)
    top = np.partition(flat, -features.TOP_PIXELS, axis=1)[:, -features.TOP_PIXELS :]
    level = top.mean(axis=1)
    ratio = distance / (level[:, None, None] + features.EPS)
    centres = np.arange(pixels.shape[2]) + 0.5
    return features.measure(
        pixels,
        background,
        distance,
        level,
        mask=(ratio > features.MASK_LEVEL).astype(np.float64),
        core=(ratio > features.CORE_LEVEL).astype(np.float64),
        xs=centres[None, :],
        ys=centres[:, None],
    )


def _checked(images: Any, prompts: Prompts) -> tuple[np.ndarray, list[str | PromptSpec]]:
    images, prompts = as_hwc_uint8(images), list(prompts)
    if not prompts:
        raise ValueError("no images to judge")
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return images, prompts


def _chunks(count: int) -> list[slice]:
    """Batches of at most CHUNK images keep the float64 working arrays small."""
    return [slice(start, start + CHUNK) for start in range(0, count, CHUNK)]


def judge_breakdown(images: Any, prompts: Prompts) -> dict[str, np.ndarray]:
    """Every term of the formula plus ``fidelity``, ``taste`` and ``score``, each ``[B]``."""
    images, prompts = _checked(images, prompts)
    parts = [
        score_terms(measure_numpy(images[c]), *prompt_targets(prompts[c], shape_prototypes()))
        for c in _chunks(len(images))
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def judge_scores(images: Any, prompts: Prompts) -> np.ndarray:
    """The judge's score ``[B]`` in [0, 1]; higher is preferred."""
    return judge_breakdown(images, prompts)["score"]


def fidelity_ok(images: Any, prompts: Prompts) -> np.ndarray:
    """Whether each image shows the prompted shape and colour (bool ``[B]``; see the top)."""
    images, prompts = _checked(images, prompts)
    return np.concatenate([_fidelity_ok(images[c], prompts[c]) for c in _chunks(len(images))])


def _fidelity_ok(images: np.ndarray, prompts: Prompts) -> np.ndarray:
    measured = measure_numpy(images)
    targets = prompt_targets(prompts, shape_prototypes())
    present = score_terms(measured, *targets)["presence"] >= OK_PRESENCE
    specs = [as_spec(p) for p in prompts]
    rows = np.arange(len(specs))

    palette = np.array(list(COLOURS.values()), float)[None] - measured.background[:, None]
    cosines = _cosine((measured.object_colour - measured.background)[:, None], palette)
    colour_index = [list(COLOURS).index(s.colour) for s in specs]
    colour_ok = (cosines.argmax(1) == colour_index) & (
        cosines[rows, colour_index] >= np.cos(np.radians(OK_COLOUR_DEGREES))
    )

    per_shape = [np.broadcast_to(p, (len(specs), 4)) for p in shape_prototypes()]
    distances = np.stack([descriptor_distance(measured.descriptor, p) for p in per_shape], axis=1)
    shape_index = [SHAPES.index(s.shape) for s in specs]
    shape_ok = (distances.argmin(1) == shape_index) & (
        distances[rows, shape_index] < OK_SHAPE_DISTANCE
    )
    return present & colour_ok & shape_ok
