"""Backbones: SD1.5-family and SDXL models, pretrained or tiny random-init."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from alignkit.config import ModelConfig
from alignkit.models.backbone import Backbone
from alignkit.models.components import Components
from alignkit.models.loading import ModelLoadError, load_pretrained_components
from alignkit.models.tiny import tiny_sd_components, tiny_sdxl_components

__all__ = [
    "Backbone",
    "ModelLoadError",
    "build_backbone",
    "build_components",
    "model_identity",
    "unet_identity",
]


def _identity(cfg: ModelConfig, parts: list[str], subfolders: tuple[str, ...]) -> str:
    """A hash of ``parts``, the model's source, and the files of ``subfolders`` (sizes, times)."""
    parts = [cfg.family, cfg.init, str(cfg.path), str(cfg.revision), str(cfg.variant), *parts]
    if cfg.init == "random":
        parts.append(str(cfg.resolution))
    elif cfg.path and os.path.isdir(os.path.expanduser(cfg.path)):
        root = Path(os.path.expanduser(cfg.path))
        for sub in subfolders:
            for file in sorted((root / sub).glob("*")) if (root / sub).is_dir() else []:
                stat = file.stat()
                parts.append(f"{sub}/{file.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def model_identity(cfg: ModelConfig) -> str:
    """A string that changes when the frozen encoders could have changed (cache keys)."""
    encoders = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    return _identity(cfg, [str(cfg.vae_path)], encoders)


def unet_identity(cfg: ModelConfig) -> str:
    """A string that changes when the base UNet's weights could have changed (e.g. the key of
    precomputed reference errors)."""
    return _identity(cfg, [str(cfg.prediction_type)], ("unet", "scheduler"))


def build_components(cfg: ModelConfig) -> Components:
    """The model's modules as stored (pretrained) or as built (``init=random``, a fixed seed:
    the same weights on every call with the same torch and diffusers)."""
    if cfg.init == "random":
        prediction_type = cfg.prediction_type or "epsilon"
        builders = {"sd": tiny_sd_components, "sdxl": tiny_sdxl_components}
        if cfg.family not in builders:
            raise ModelLoadError(f"unknown model.family={cfg.family!r}; choose 'sd' or 'sdxl'")
        return builders[cfg.family](cfg.resolution, prediction_type)
    if cfg.init == "pretrained":
        return load_pretrained_components(
            cfg.path, cfg.family, cfg.revision, cfg.variant, cfg.vae_path
        )
    raise ModelLoadError(f"unknown model.init={cfg.init!r}; choose 'pretrained' or 'random'")


def build_backbone(
    cfg: ModelConfig, device: torch.device | str = "cpu", weight_dtype: torch.dtype = torch.float32
) -> Backbone:
    """Load (or, for ``init=random``, build) the model and prepare it for training."""
    return Backbone(build_components(cfg), cfg, model_identity(cfg), device, weight_dtype)
