"""Tiny random-init models of the real classes (UNet2DConditionModel, AutoencoderKL, CLIP).

They exercise exactly the code paths of SD1.5 and SDXL — the same classes, the same
conditioning — at a size that trains on a CPU in seconds. Built in process: no files.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from alignkit.models.components import Components
from alignkit.models.tokenizer import offline_clip_tokenizer

TEXT_WIDTH = 32
VAE_DOWNSAMPLE = 4  # two downsampling stages in the tiny VAE below


def tiny_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """SD's training noise schedule (scaled-linear betas, 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def _text_config(projection: bool) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH if projection else 512,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _tiny_unet(resolution: int, cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=resolution // VAE_DOWNSAMPLE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def tiny_sd_components(
    resolution: int = 32, prediction_type: str = "epsilon", seed: int = 0
) -> Components:
    """An SD1.5-shaped model: one CLIP text encoder, epsilon or v-prediction."""
    torch.manual_seed(seed)
    return Components(
        family="sd",
        unet=_tiny_unet(resolution, cross_attention_dim=TEXT_WIDTH),
        vae=tiny_vae(),
        scheduler=tiny_scheduler(prediction_type),
        text_encoders=[CLIPTextModel(_text_config(projection=False))],
        tokenizers=[offline_clip_tokenizer()],
    )


def tiny_sdxl_components(
    resolution: int = 32, prediction_type: str = "epsilon", seed: int = 0
) -> Components:
    """An SDXL-shaped model: two text encoders, pooled embeddings and time-id conditioning."""
    torch.manual_seed(seed)
    time_embed_dim = 8
    unet = _tiny_unet(
        resolution,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_WIDTH,
        use_linear_projection=True,
    )
    return Components(
        family="sdxl",
        unet=unet,
        vae=tiny_vae(),
        scheduler=tiny_scheduler(prediction_type),
        text_encoders=[
            CLIPTextModel(_text_config(projection=False)),
            CLIPTextModelWithProjection(_text_config(projection=True)),
        ],
        tokenizers=[offline_clip_tokenizer(), offline_clip_tokenizer(pad_token="!")],
        zero_negative_prompt=True,  # diffusers' SDXL pipeline default, as SDXL base
    )
