"""Procedural styles for the style-alignment task, each with an exact style score.

The Diffusion-RPO paper's second evaluation trains on pairs where a styled copy of an image
(Van Gogh, sketch, winter) beats the original and measures how strongly the samples take the
style. Here a style is a deterministic function of an image and its score a closed-form pixel
statistic that the style raises, so "how styled is this sample" has an exact answer:

- ``sketch``: a pencil drawing, dark grey lines where the image has edges on white paper.
  Score: mean luminance minus mean chroma (``max - min`` of the channels): bright, colourless
  images score high (1 for blank paper, 0 for black, -0.7 for pure red).
- ``winter``: a cold, pale palette (red damped, blue lifted towards 1). Score: mean of
  ``blue - red``, in [-1, 1].
- ``stripes``: horizontal bands, a sinusoid of 4 cycles per image height blended in.
  Score: the amplitude of that frequency in the channel mean,
  ``2 |mean(grey(y, x) exp(-2 pi i 4 (y + 1/2) / H))|``: exactly ``c`` for an image
  ``m + c cos(2 pi 4 (y + 1/2) / H + phase)``.

Images are float tensors ``[B, 3, H, W]`` in [0, 1]; every score is differentiable in torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights
EPS = 1e-16  # inside the stripes score's square root: finite gradients at zero amplitude

PAPER, PENCIL = 1.0, 0.3  # sketch: the paper's and the darkest line's grey level
EDGE_FULL = 0.25  # sketch: RGB gradient magnitude (per pixel) drawn at full pencil strength
WINTER_GAIN = (0.6, 0.85, 0.6)  # winter: x -> gain * x + lift, per channel (R, G, B)
WINTER_LIFT = (0.0, 0.1, 0.4)
STRIPE_CYCLES = 4  # stripes: bands per image height (period 8 px at the tiny model's 32 px)
STRIPE_WEIGHT = 0.4  # stripes: how much of the band pattern is blended in


@dataclass(frozen=True)
class Style:
    """A style's transform and its score; ``description`` is what docs and reports show."""

    name: str
    description: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    score: Callable[[torch.Tensor], torch.Tensor]


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"expected float images [B, 3, H, W] in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got {images.dtype}; divide by 255")


def luminance(images: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: the BT.601 weighted sum of the channels."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
    return (images * weights[:, None, None]).sum(1)


def chroma(images: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: largest minus smallest channel, 0 for any grey."""
    return images.amax(1) - images.amin(1)


def edge_strength(images: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: RGB gradient magnitude from central differences (borders replicated)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return (dx * dx + dy * dy).sum(1).sqrt()


def sketch(images: torch.Tensor) -> torch.Tensor:
    """Grey lines, darker where edges are stronger, on white paper."""
    line = (edge_strength(images) / EDGE_FULL).clamp(0.0, 1.0)
    grey = PAPER - (PAPER - PENCIL) * line
    return grey[:, None].expand(-1, 3, -1, -1).contiguous()


def sketch_score(images: torch.Tensor) -> torch.Tensor:
    """``[B]``: mean luminance minus mean chroma."""
    return (luminance(images) - chroma(images)).flatten(1).mean(1)


def winter(images: torch.Tensor) -> torch.Tensor:
    """Per channel ``gain * x + lift``: red x0.6, green x0.85 + 0.1, blue x0.6 + 0.4.

    Blue never falls and red never rises, so the winter score can only go up.
    """
    gain = torch.tensor(WINTER_GAIN, dtype=images.dtype, device=images.device)
    lift = torch.tensor(WINTER_LIFT, dtype=images.dtype, device=images.device)
    return images * gain[:, None, None] + lift[:, None, None]


def winter_score(images: torch.Tensor) -> torch.Tensor:
    """``[B]``: mean of blue minus red."""
    return (images[:, 2] - images[:, 0]).flatten(1).mean(1)


def stripe_phase(height: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[H]``: the angle ``2 pi cycles (y + 1/2) / H`` at each row's centre."""
    rows = torch.arange(height, dtype=dtype, device=device) + 0.5
    return 2 * math.pi * STRIPE_CYCLES * rows / height


def stripes(images: torch.Tensor) -> torch.Tensor:
    """Blend in bands ``(1 + cos(phase)) / 2``: light at the top row, 4 dark bands down."""
    phase = stripe_phase(images.shape[-2], images.dtype, images.device)
    bands = 0.5 + 0.5 * phase.cos()
    return (1 - STRIPE_WEIGHT) * images + STRIPE_WEIGHT * bands[:, None]


def stripes_score(images: torch.Tensor) -> torch.Tensor:
    """``[B]``: amplitude of the 4-cycles-per-height component of the channel mean."""
    phase = stripe_phase(images.shape[-2], images.dtype, images.device)
    rows = images.mean((1, 3))  # [B, H]: the mean of each row over channels and columns
    real = (rows * phase.cos()).mean(1)
    imag = (rows * phase.sin()).mean(1)
    return 2 * (real * real + imag * imag + EPS) ** 0.5


STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        Style("sketch", "grey pencil lines on white paper", sketch, sketch_score),
        Style("winter", "a cold, pale palette", winter, winter_score),
        Style("stripes", "horizontal bands, 4 per image height", stripes, stripes_score),
    )
}


def get_style(name: str, setting: str = "style") -> Style:
    """The style called ``name``; a ValueError names the ``setting`` and the valid styles."""
    if name not in STYLES:
        raise ValueError(f"unknown {setting}={name!r}; choose one of: {', '.join(STYLES)}")
    return STYLES[name]


def apply_style(name: str, images: torch.Tensor) -> torch.Tensor:
    """The styled copy of ``images`` ``[B, 3, H, W]`` in [0, 1], clipped to [0, 1]."""
    check_images(images)
    return get_style(name).apply(images).clamp(0.0, 1.0)


def style_score(name: str, images: torch.Tensor) -> torch.Tensor:
    """How strongly each image ``[B, 3, H, W]`` in [0, 1] shows the style: ``[B]``."""
    check_images(images)
    return get_style(name).score(images)
