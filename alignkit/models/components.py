"""The bag of modules a text-to-image diffusion model is made of, however it was obtained."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel


@dataclass
class Components:
    family: str  # "sd" | "sdxl"
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDPMScheduler
    text_encoders: list[torch.nn.Module]
    tokenizers: list
    # Classifier-free guidance's unconditional input is all zeros (prompt and pooled
    # embeddings) rather than the encoding of "": diffusers' SDXL pipeline does this when the
    # model's ``force_zeros_for_empty_prompt`` is set, as SDXL base sets it.
    zero_negative_prompt: bool = False
