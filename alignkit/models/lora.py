"""LoRA on the UNet through peft, and the adapter's export in diffusers' format."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from alignkit.config import LoRAConfig

ADAPTER_NAME = "default"


def _peft_init(init: str) -> bool | str:
    return {"true": True, "false": False}.get(init.lower(), init)


def add_lora(unet: torch.nn.Module, cfg: LoRAConfig) -> None:
    """Freeze the UNet and attach a trainable LoRA adapter to the target modules."""
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            init_lora_weights=_peft_init(cfg.init),
            target_modules=list(cfg.target_modules),
        ),
        adapter_name=ADAPTER_NAME,
    )


@contextmanager
def adapters_disabled(unet: torch.nn.Module) -> Iterator[None]:
    """The reference model: the same UNet with its adapters switched off."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's key names (for checkpoints)."""
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}


def load_lora_state_dict(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"checkpoint has LoRA keys this model lacks: {unexpected[:5]}")


def save_lora_for_diffusers(unet: torch.nn.Module, family: str, folder: str | Path) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` that ``pipeline.load_lora_weights`` reads."""
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.items()}
    pipeline = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline.save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)
    return Path(folder) / "pytorch_lora_weights.safetensors"
