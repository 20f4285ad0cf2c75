"""Image bytes -> square training pixels, with one crop and flip shared by winner and loser.

The pair is compared under the same noise in Diffusion-DPO, so it must also be seen under
the same view: both images are resized to the winner's resized size, then cropped at the
same place and flipped together (independent crops are a known flaw of the SD1.5 script).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

RESAMPLE = Image.Resampling.LANCZOS


class UndecodableImageError(ValueError):
    """An image's bytes are missing, truncated or in no format Pillow reads."""


def decode_image(data: bytes | None) -> Image.Image:
    """Encoded bytes -> an RGB image; ``UndecodableImageError`` for anything unreadable."""
    if not data:
        raise UndecodableImageError("no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UndecodableImageError(f"{type(err).__name__}: {err}") from None
    if min(rgb.size) == 0:
        raise UndecodableImageError(f"empty image of size {rgb.size}")
    return rgb


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) with the shorter side at ``resolution`` and the aspect ratio kept."""
    scale = resolution / min(width, height)
    return max(resolution, round(width * scale)), max(resolution, round(height * scale))


def pixels_from_image(image: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor ``[3, H, W]`` in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float() / 127.5 - 1.0


@dataclass(frozen=True)
class CropFlip:
    """Where the square crop starts in the resized image, and whether it is then mirrored."""

    top: int
    left: int
    flip: bool


@dataclass(frozen=True)
class PixelPair:
    pixels_w: torch.Tensor
    pixels_l: torch.Tensor
    micro_cond: torch.Tensor
    # Seed of this view's VAE posterior draw (data.latents=sample); None: the posterior mode.
    latent_seed: int | None = None


@dataclass(frozen=True)
class PairTransform:
    """Resize the shorter side, crop square (centre or random), optionally flip; both alike.

    ``micro_cond`` is SDXL's ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``
    of the winner, with the crop corner in the resized image's coordinates before the flip,
    as the SDXL training scripts record it.
    """

    resolution: int
    random_crop: bool
    random_flip: bool
    sample_latents: bool = False

    def draw(self, width: int, height: int, generator: torch.Generator) -> CropFlip:
        """The crop and flip of a resized image; always three draws, so plans stay aligned."""
        spare_h, spare_w = height - self.resolution, width - self.resolution
        random_top = int(torch.randint(0, spare_h + 1, (1,), generator=generator))
        random_left = int(torch.randint(0, spare_w + 1, (1,), generator=generator))
        coin = float(torch.rand(1, generator=generator))
        if self.random_crop:
            top, left = random_top, random_left
        else:
            top, left = spare_h // 2, spare_w // 2
        return CropFlip(top, left, self.random_flip and coin < 0.5)

    def __call__(
        self, winner: bytes | None, loser: bytes | None, generator: torch.Generator
    ) -> PixelPair:
        image_w, image_l = decode_image(winner), decode_image(loser)
        size = resized_size(image_w.width, image_w.height, self.resolution)
        plan = self.draw(*size, generator)
        box = (plan.left, plan.top, plan.left + self.resolution, plan.top + self.resolution)
        views = []
        for image in (image_w, image_l):
            view = image.resize(size, RESAMPLE).crop(box)
            views.append(view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if plan.flip else view)
        micro_cond = torch.tensor(
            [image_w.height, image_w.width, plan.top, plan.left, self.resolution, self.resolution],
            dtype=torch.float32,
        )
        # drawn after the crop and flip, so those stay what they were without sampling
        seed = (
            int(torch.randint(0, 2**62, (1,), generator=generator)) if self.sample_latents else None
        )
        return PixelPair(pixels_from_image(views[0]), pixels_from_image(views[1]), micro_cond, seed)
