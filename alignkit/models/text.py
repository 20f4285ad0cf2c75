"""Prompt encoding and UNet conditioning: the one place that knows each family's quirks.

SD1.5 family: one CLIP text encoder, last hidden state.
SDXL: two encoders, each's penultimate hidden state concatenated, the pooled projection of
encoder 2, and ``add_time_ids = original_size + crop_top_left + target_size`` per sample.
"""

from __future__ import annotations

import torch


def _token_ids(tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


@torch.no_grad()
def encode_prompts(
    family: str, text_encoders: list[torch.nn.Module], tokenizers: list, prompts: list[str]
) -> dict[str, torch.Tensor]:
    """Per-sample text tensors: ``prompt_embeds`` (+ ``pooled_prompt_embeds`` for SDXL)."""
    device = next(text_encoders[0].parameters()).device
    if family == "sd":
        ids = _token_ids(tokenizers[0], prompts, device)
        return {"prompt_embeds": text_encoders[0](ids)[0]}
    outputs = [
        encoder(_token_ids(tokenizer, prompts, device), output_hidden_states=True)
        for encoder, tokenizer in zip(text_encoders, tokenizers)
    ]
    return {
        "prompt_embeds": torch.cat([out.hidden_states[-2] for out in outputs], dim=-1),
        "pooled_prompt_embeds": outputs[-1].text_embeds,
    }


def unet_conditioning(
    family: str, text: dict[str, torch.Tensor], micro_cond: torch.Tensor | None, dtype: torch.dtype
) -> dict:
    """Keyword arguments for ``UNet2DConditionModel.forward`` besides sample and timestep."""
    kwargs = {"encoder_hidden_states": text["prompt_embeds"].to(dtype)}
    if family == "sdxl":
        if micro_cond is None:
            raise ValueError("SDXL needs micro-conditioning (original size, crop, target size)")
        kwargs["added_cond_kwargs"] = {
            "text_embeds": text["pooled_prompt_embeds"].to(dtype),
            "time_ids": micro_cond.to(dtype),
        }
    return kwargs


def default_micro_cond(batch_size: int, resolution: int, device=None) -> torch.Tensor:
    """Micro-conditioning for generation: an uncropped square image at ``resolution``."""
    row = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)
    return row.to(device).expand(batch_size, 6).clone()
