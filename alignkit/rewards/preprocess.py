"""Image-model preprocessing redone in torch, so reward gradients reach the pixels.

Reward models ship PIL/torchvision pipelines (resize, centre crop or pad, normalise) that cut
the graph. ``resize_crop_normalise`` computes the same geometry with ``F.interpolate``
(antialiased, like PIL's filters) on ``[B, 3, H, W]`` images in [0, 1]. Official pipelines
resize 8-bit images and round; this one stays in float, which is the stated tolerance of
``tests/test_reward_zoo.py`` (mean |diff| < 0.01, max < 0.1 in normalised units).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: shortest: shorter side to the size, then centre crop (CLIP, PickScore, the aesthetic model);
#: longest: longer side to the size, then centre pad with black (HPSv2's ResizeMaxSize);
#: squash: straight to the size, aspect ratio ignored.
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(
            f"unsupported preprocess {name} {value!r}; set preprocess_cfg.{name} to one of "
            f"{', '.join(valid)}"
        )


def check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"expected float images [B, 3, H, W] in [0, 1], got {images.dtype} "
            f"{tuple(images.shape)}"
        )


def shortest_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """torchvision's ``Resize(side)``: the shorter side becomes ``side``, the other truncates."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def longest_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """The longer side becomes ``side``, the other rounds (HPSv2's ResizeMaxSize)."""
    scale = side / max(height, width)
    return round(height * scale), round(width * scale)


def centre_crop_or_pad(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's ``center_crop``: crop with rounded half-differences, or pad with zeros
    (left/top get the floor of half the padding) where the image is smaller."""
    pad_h, pad_w = max(height - images.shape[-2], 0), max(width - images.shape[-1], 0)
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    top = int(round((images.shape[-2] - height) / 2.0))
    left = int(round((images.shape[-1] - width) / 2.0))
    return images[..., top : top + height, left : left + width]


def resize_crop_normalise(
    images: torch.Tensor,
    size: tuple[int, int],
    resize_mode: str,
    interpolation: str,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """[0, 1] images ``[B, 3, H, W]`` -> a model input of ``size`` (differentiable)."""
    check_images(images)
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    images = images.to(mean.dtype)
    height, width = images.shape[-2:]
    target_height, target_width = size
    if resize_mode == "squash":
        new_size = (target_height, target_width)
    elif resize_mode == "longest":
        new_size = longest_side_size(height, width, max(target_height, target_width))
    elif target_height == target_width:
        new_size = shortest_side_size(height, width, target_height)
    else:
        scale = max(target_height / height, target_width / width)
        new_size = (round(height * scale), round(width * scale))
    if new_size != (height, width):
        images = F.interpolate(
            images, size=new_size, mode=interpolation, align_corners=False, antialias=True
        )
    images = centre_crop_or_pad(images, target_height, target_width)
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
