"""LoRA on the UNet through peft: attach, switch off, save in diffusers' format, load a file."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from alignkit.config import LoRAConfig
from alignkit.models.lora_files import (
    DIFFUSERS_WEIGHT_NAME,
    LoRALayer,
    adapter_metadata,
    diffusers_layer_dict,
    kohya_name_table,
    read_lora_file,
)

ADAPTER_NAME = "default"


def _peft_init(init: str) -> bool | str:
    return {"true": True, "false": False}.get(init.lower(), init)


def add_lora(unet: torch.nn.Module, cfg: LoRAConfig) -> None:
    """Freeze the UNet and attach a trainable LoRA adapter to the target modules."""
    unet.requires_grad_(False)
    _LORA_LAYERS.pop(unet, None)
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


#: Each UNet's LoRA layers, found once: walking every module on each switch costs ~20 ms a
#: DPO step on the tiny SD1.5 benchmark (experiments/bench_vs_diffusers.py).
_LORA_LAYERS: weakref.WeakKeyDictionary[torch.nn.Module, list[BaseTunerLayer]] = (
    weakref.WeakKeyDictionary()
)


def _lora_layers(unet: torch.nn.Module) -> list[BaseTunerLayer]:
    layers = _LORA_LAYERS.get(unet)
    if layers is None:
        layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        _LORA_LAYERS[unet] = layers
    return layers


@contextmanager
def adapters_disabled(unet: torch.nn.Module) -> Iterator[None]:
    """The reference model: the same UNet with its adapters switched off.

    Only each layer's off switch is flipped (what peft's forward reads). peft's own toggle
    also resets the adapters' requires_grad, which changes nothing here: a switched-off
    adapter takes no part in the forward pass, so it gets no gradient either way.
    """
    layers = _lora_layers(unet)
    before = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, disabled in zip(layers, before):
            layer._disable_adapters = disabled


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's key names (for checkpoints)."""
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}


def load_lora_state_dict(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"checkpoint has LoRA keys this model lacks: {unexpected[:5]}")


def lora_layers(unet: torch.nn.Module, alpha: float) -> dict[str, LoRALayer]:
    """The adapter's weights per module path, detached on the CPU."""
    layers = {}
    for path, module in unet.named_modules():
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict):
            down = module.lora_A[ADAPTER_NAME].weight.detach().to("cpu", torch.float32)
            up = module.lora_B[ADAPTER_NAME].weight.detach().to("cpu", torch.float32)
            layers[path] = LoRALayer(down, up, alpha)
    return layers


def write_diffusers_file(
    layers: dict[str, LoRALayer], family: str, folder: str | Path, target_modules: list[str]
) -> Path:
    """``pytorch_lora_weights.safetensors`` that ``pipeline.load_lora_weights`` reads, with
    the rank, alpha and target modules in its header so that alpha != rank survives."""
    ranks = {layer.rank for layer in layers.values()}
    alphas = {layer.alpha for layer in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(
            f"a diffusers LoRA file takes one rank and alpha; these layers have ranks "
            f"{sorted(ranks)} and alphas {sorted(alphas)}"
        )
    pipeline = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=diffusers_layer_dict(layers),
        safe_serialization=True,
        unet_lora_adapter_metadata=adapter_metadata(ranks.pop(), alphas.pop(), target_modules),
    )
    return Path(folder) / DIFFUSERS_WEIGHT_NAME


def save_lora_for_diffusers(
    unet: torch.nn.Module, family: str, folder: str | Path, cfg: LoRAConfig
) -> Path:
    """The trained adapter as diffusers' LoRA file (``write_diffusers_file``)."""
    return write_diffusers_file(
        lora_layers(unet, cfg.alpha), family, folder, list(cfg.target_modules)
    )


def _layers_per_block(unet: torch.nn.Module) -> int | None:
    value = unet.config.layers_per_block
    return value if isinstance(value, int) else None


def _target_names(paths: list[str]) -> list[str]:
    """Module paths as peft target names: the last part, or the last two when it is an index
    (``to_out.0``)."""
    names = set()
    for path in paths:
        parts = path.split(".")
        names.add(".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1])
    return sorted(names)


def load_lora_file(unet: torch.nn.Module, cfg: LoRAConfig) -> str:
    """Start the adapter from ``cfg.load`` (diffusers or kohya layout; returns which).

    The file must adapt exactly the modules ``cfg.target_modules`` picks, at ``cfg.rank``.
    An alpha other than ``cfg.alpha`` is folded into the up weights, so that the model
    computes what the file's LoRA computes while training keeps the configured scale.
    """
    own = lora_layers(unet, cfg.alpha)
    names = kohya_name_table(own, _layers_per_block(unet))
    file_format, layers = read_lora_file(cfg.load, names)
    missing, extra = sorted(set(own) - set(layers)), sorted(set(layers) - set(own))
    if missing or extra:
        raise ValueError(
            f"model.lora.load={cfg.load} adapts modules {_target_names(list(layers))} but "
            f"model.lora.target_modules={list(cfg.target_modules)} picks "
            f"{_target_names(list(own))} ({len(extra)} module(s) only in the file, e.g. "
            f"{extra[:2]}; {len(missing)} only in the model, e.g. {missing[:2]}): set "
            "model.lora.target_modules to match the file, or check model= is the "
            "architecture it was trained for"
        )
    ranks = sorted({layer.rank for layer in layers.values()})
    if ranks != [cfg.rank]:
        fix = f"set model.lora.rank={ranks[0]}" if len(ranks) == 1 else "it needs one rank"
        raise ValueError(
            f"model.lora.load={cfg.load} has rank {', '.join(map(str, ranks))} but "
            f"model.lora.rank={cfg.rank}: {fix}"
        )
    for path, layer in layers.items():
        module = unet.get_submodule(path)
        targets = (module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight)
        up = layer.up * (layer.alpha / cfg.alpha)
        for target, source in zip(targets, (layer.down, up)):
            if target.shape != source.shape:
                raise ValueError(
                    f"model.lora.load={cfg.load}: {path} has shape {tuple(source.shape)} in "
                    f"the file but {tuple(target.shape)} in the model; the LoRA was trained "
                    "for another architecture than model="
                )
            with torch.no_grad():
                target.copy_(source.to(target.dtype))
    return file_format
