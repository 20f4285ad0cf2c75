"""The UNet's encoder half as a feature extractor (NCP's noise-conditioned perception).

Reproduces ``UNet2DConditionModel.forward`` up to the last down block (``layer="down"``) or
through the mid block (``layer="mid"``): time embedding, class and added embeddings (SDXL's
pooled text + time ids), ``conv_in``, every down block (skip residuals dropped). It runs the
module's own sub-blocks, so the features are exactly the activations a full forward computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel

ENCODER_LAYERS = ("mid", "down")


@contextmanager
def block_checkpointing_off(unet: torch.nn.Module) -> Iterator[None]:
    """Switch diffusers' per-block gradient checkpointing off, restoring each flag after.

    A block-level checkpoint recomputes its forward during backward, outside any context the
    forward ran in (such as disabled adapters); the encoder checkpoints as a whole instead.
    """
    modules = [m for m in unet.modules() if getattr(m, "gradient_checkpointing", False)]
    for module in modules:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in modules:
            module.gradient_checkpointing = True


def unet_encoder_features(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    layer: str = "mid",
) -> torch.Tensor:
    """The activations after the last down block or the mid block, ``[B, C, h, w]``."""
    if layer not in ENCODER_LAYERS:
        raise ValueError(f"unknown NCP encoder layer {layer!r}; choose 'mid' or 'down'")
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    class_emb = unet.get_class_embed(sample=sample, class_labels=None)
    if class_emb is not None:
        concat = unet.config.class_embeddings_concat
        emb = torch.cat([emb, class_emb], dim=-1) if concat else emb + class_emb
    aug_emb = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    if unet.config.addition_embed_type == "image_hint":
        raise ValueError("NCP features of image-hint UNets (with a control image) are unsupported")
    emb = emb + aug_emb if aug_emb is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    hidden = unet.conv_in(sample)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, _ = block(
                hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states
            )
        else:
            hidden, _ = block(hidden_states=hidden, temb=emb)
    if layer == "down":
        return hidden
    if unet.mid_block is None:
        raise ValueError("this UNet has no mid block; use the NCP encoder layer 'down'")
    if getattr(unet.mid_block, "has_cross_attention", False):
        return unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
    return unet.mid_block(hidden, emb)
