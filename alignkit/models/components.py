"""The bag of modules a text-to-image diffusion model is made of, however it was obtained."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)


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


def pipeline_from_components(components: Components, scheduler=None) -> DiffusionPipeline:
    """The diffusers pipeline these modules make (SD or SDXL), e.g. to save as a model folder;
    ``scheduler`` replaces the training scheduler (a sampling one, say)."""
    encoders, tokenizers = components.text_encoders, components.tokenizers
    common = {
        "vae": components.vae,
        "unet": components.unet,
        "scheduler": scheduler or components.scheduler,
    }
    if components.family == "sdxl":
        return StableDiffusionXLPipeline(
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            force_zeros_for_empty_prompt=components.zero_negative_prompt,
            **common,
        )
    return StableDiffusionPipeline(
        text_encoder=encoders[0],
        tokenizer=tokenizers[0],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **common,
    )
