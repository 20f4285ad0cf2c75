"""The tiny world's renderer: a prompt and a seed -> a 64x64 RGB image (uint8, HWC).

The nuisance variation is deliberately broad (position, size, tilt, edge blur, washed-out
colour, background gradient and noise), so that a typical sample does not already have the
judge's taste (large, centred, crisp, strong contrast) and preference data has room to teach
it. ``draw`` takes the variation explicitly, which lets tests build good and bad images.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from alignkit.tinyworld.grammar import PromptSpec, as_spec
from alignkit.tinyworld.shapes import signed_distance

IMAGE_SIZE = 64
#: Objects stand upright within this tilt (radians, 15 degrees). Uniformly random rotations made
#: every non-circle a mixture of orientations: the tiny base model averaged them into blobs and
#: drew only circles faithfully (held-out fidelity 0.25 = the circle prompts).
MAX_TILT = math.radians(15.0)
#: Smallest radius, as a fraction of the side: at the model's 32x32 pixels smaller objects are
#: a few pixels wide and even the VAE's reconstructions of them lose their shape.
MIN_RADIUS = 0.15
PIXEL_BLUR = 0.35  # px: the anti-aliasing of a crisp edge, as a Gaussian sigma
LOGISTIC_FOR_GAUSSIAN = 1.702  # sigmoid(1.702 x) approximates the standard normal CDF


@dataclass(frozen=True)
class Variation:
    """How one image of a prompt looks; lengths in pixels, colours in 0-255 units."""

    centre: tuple[float, float]  # (x, y) of the object's centre
    radius: float  # circumradius of the object
    angle: float  # rotation, radians
    edge_blur: float  # Gaussian sigma of the edge; 0 is crisp (anti-aliased only)
    washout: float  # 0..1: how far the object's colour is blended towards the background
    colour_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    background_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gradient: tuple[float, float] = (0.0, 0.0)  # background brightness change across x and y
    noise: float = 0.0  # std of the per-pixel noise
    noise_seed: int = 0


def sample_variation(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Variation:
    """The base distribution, broad on purpose.

    Radius 15-42% of the side, centre anywhere that keeps 85% of the radius inside, tilted up
    to 15 degrees either way; 60% of images have blurred edges (sigma 0.6-2.5 px, at most 0.2
    radius) and 60% a washed-out object (10-60% of the way to the background); colour jitter
    +-15 per channel, background shift +-10, a brightness gradient up to 16 and noise sigma up to 3.
    """
    radius = rng.uniform(MIN_RADIUS, 0.42) * size
    margin = 0.85 * radius
    blurred, washed = rng.random() < 0.6, rng.random() < 0.6
    gradient_angle = rng.uniform(0.0, 2 * math.pi)
    gradient_size = rng.uniform(0.0, 16.0)
    return Variation(
        centre=(rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)),
        radius=radius,
        angle=rng.uniform(-MAX_TILT, MAX_TILT),
        edge_blur=min(rng.uniform(0.6, 2.5), 0.2 * radius) if blurred else 0.0,
        washout=rng.uniform(0.1, 0.6) if washed else 0.0,
        colour_shift=tuple(rng.uniform(-15.0, 15.0, size=3)),
        background_shift=tuple(rng.uniform(-10.0, 10.0, size=3)),
        gradient=(
            gradient_size * math.cos(gradient_angle),
            gradient_size * math.sin(gradient_angle),
        ),
        noise=rng.uniform(0.0, 3.0),
        noise_seed=int(rng.integers(2**31)),
    )


def draw(spec: PromptSpec, variation: Variation, size: int = IMAGE_SIZE) -> np.ndarray:
    """Composite the object over the background: uint8 ``[size, size, 3]``."""
    pixel = np.arange(size) + 0.5
    dx, dy = pixel[None, :] - variation.centre[0], pixel[:, None] - variation.centre[1]
    cos, sin = math.cos(variation.angle), math.sin(variation.angle)
    along, across = cos * dx + sin * dy, cos * dy - sin * dx  # the object's own frame
    distance = signed_distance(spec.shape, along, across, variation.radius)
    softness = math.hypot(variation.edge_blur, PIXEL_BLUR) / LOGISTIC_FOR_GAUSSIAN
    coverage = 1.0 / (1.0 + np.exp(np.clip(distance / softness, -50.0, 50.0)))

    background = np.asarray(spec.background_rgb, float) + variation.background_shift
    obj = np.asarray(spec.colour_rgb, float) + variation.colour_shift
    obj = (1.0 - variation.washout) * obj + variation.washout * background
    offset = (pixel - size / 2) / size
    brightness = variation.gradient[0] * offset[None, :] + variation.gradient[1] * offset[:, None]
    field = background + brightness[..., None]
    image = field + coverage[..., None] * (obj - field)
    noise = np.random.default_rng(variation.noise_seed).normal(0.0, 1.0, image.shape)
    return np.clip(np.rint(image + variation.noise * noise), 0, 255).astype(np.uint8)


def render(prompt: str | PromptSpec, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """A sample of the base distribution; the same (prompt, seed) always gives the same image."""
    spec = as_spec(prompt)
    rng = np.random.default_rng([seed, zlib.crc32(spec.text.encode())])
    return draw(spec, sample_variation(rng, size), size)
