"""LoRA files in the two layouts people exchange: diffusers' and kohya's (webui, ComfyUI).

Both store, per adapted module, a down projection ``A`` (rank x in), an up projection ``B``
(out x rank) and a scale ``alpha / rank``; they differ in key names and in where ``alpha``
lives. Here both are read into one neutral form, ``{module path: LoRALayer}``, with module
paths as in the diffusers UNet (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``),
and written back out from it.

diffusers: ``unet.<path>.lora.down.weight`` / ``.lora.up.weight`` (or peft's ``lora_A`` /
``lora_B``); alpha in the safetensors header (``lora_adapter_metadata``, read by diffusers
>= 0.35), else alpha = rank. kohya: ``lora_unet_<path with '.' -> '_'>.lora_down.weight`` /
``.lora_up.weight`` and a scalar ``.alpha`` per module (absent: alpha = rank).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key (loaders.lora_base)
KOHYA_PREFIX = "lora_unet_"
KOHYA_TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")


@dataclass(frozen=True)
class LoRALayer:
    """One adapted module: ``W + (alpha / rank) * up @ down``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def resolve_lora_file(path: str | Path) -> Path:
    """A LoRA file, or a folder holding diffusers' ``pytorch_lora_weights.safetensors``."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / DIFFUSERS_WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no LoRA file at {path}: pass a .safetensors file (diffusers or kohya/webui layout) "
            f"or a folder that holds {DIFFUSERS_WEIGHT_NAME}"
        )
    if path.suffix != ".safetensors":
        raise ValueError(f"{path} is not a .safetensors file; only safetensors LoRAs are read")
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as file:
            header = file.metadata() or {}
        return load_file(str(path)), header
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


def is_kohya(keys: Iterable[str]) -> bool:
    return any(key.startswith((KOHYA_PREFIX, *KOHYA_TEXT_PREFIXES)) for key in keys)


def read_lora_file(
    path: str | Path,
    kohya_names: Mapping[str, str],
    default_alpha: float | None = None,
) -> tuple[str, dict[str, LoRALayer]]:
    """``(format, layers)`` of a LoRA file in either layout, detected from its keys.

    ``kohya_names`` maps kohya module names to module paths (``kohya_name_table``).
    ``default_alpha``: the alpha of a diffusers file without metadata (None: its rank).
    """
    path = resolve_lora_file(path)
    tensors, header = _read_safetensors(path)
    if not tensors:
        raise ValueError(f"{path} holds no tensors")
    if is_kohya(tensors):
        return "kohya", _kohya_layers(path, tensors, kohya_names)
    return "diffusers", _diffusers_layers(path, tensors, header, default_alpha)


# -- kohya ----------------------------------------------------------------------------------------
def sgm_module_path(path: str, layers_per_block: int) -> str | None:
    """The name webui's own (sgm/ldm) UNet gives an attention module, or None.

    kohya's SDXL LoRAs name modules after that UNet: the transformer of down block ``b``,
    layer ``j`` is ``input_blocks.{1 + b * (L + 1) + j}.1``, of up block ``b`` layer ``j``
    ``output_blocks.{b * (L + 1) + j}.1``, the middle one ``middle_block.1`` (L: layers per
    block); inside a transformer the names agree.
    """
    per_block = layers_per_block + 1
    if found := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", path):
        index = 1 + int(found[1]) * per_block + int(found[2])
        return f"input_blocks.{index}.1.{found[3]}"
    if found := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", path):
        index = int(found[1]) * per_block + int(found[2])
        return f"output_blocks.{index}.1.{found[3]}"
    if found := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", path):
        return f"middle_block.1.{found[1]}"
    return None


def kohya_name(path: str) -> str:
    return KOHYA_PREFIX + path.replace(".", "_")


def kohya_name_table(paths: Iterable[str], layers_per_block: int | None) -> dict[str, str]:
    """kohya module name -> module path, under diffusers' naming and (attention modules, when
    ``layers_per_block`` is an int) the sgm naming of kohya's SDXL files."""
    table = {}
    for path in paths:
        table[kohya_name(path)] = path
        sgm = sgm_module_path(path, layers_per_block) if layers_per_block is not None else None
        if sgm is not None:
            table[kohya_name(sgm)] = path
    return table


def _kohya_layers(
    path: Path, tensors: dict[str, torch.Tensor], names: Mapping[str, str]
) -> dict[str, LoRALayer]:
    text = sorted({key.split(".")[0] for key in tensors if key.startswith(KOHYA_TEXT_PREFIXES)})
    if text:
        raise ValueError(
            f"{path} adapts the text encoder too ({len(text)} modules, e.g. {text[0]}); "
            "alignkit trains and loads UNet LoRAs only: remove the lora_te* keys first"
        )
    modules = sorted({key.split(".")[0] for key in tensors})
    unknown = [module for module in modules if module not in names]
    if unknown:
        raise ValueError(
            f"{path} has LoRA layers on {len(unknown)} module(s) this model's LoRA does not "
            f"target, e.g. {', '.join(unknown[:3])}: set model.lora.target_modules to the "
            "modules the file adapts (and check model= is the architecture it was trained for)"
        )
    layers = {}
    for module in modules:
        down, up = (
            tensors.get(f"{module}.lora_down.weight"),
            tensors.get(f"{module}.lora_up.weight"),
        )
        if down is None or up is None:
            raise ValueError(f"{path}: {module} lacks its lora_down or lora_up weight")
        alpha = tensors.get(f"{module}.alpha")
        rank = down.shape[0]
        layers[names[module]] = LoRALayer(down, up, rank if alpha is None else float(alpha))
    return layers


def write_kohya_file(layers: Mapping[str, LoRALayer], file: str | Path) -> Path:
    """One ``.safetensors`` in kohya's layout, alpha per module (as configured, not the rank)."""
    tensors = {}
    for path, layer in sorted(layers.items()):
        name = kohya_name(path)
        tensors[f"{name}.lora_down.weight"] = layer.down.float().contiguous()
        tensors[f"{name}.lora_up.weight"] = layer.up.float().contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(layer.alpha))
    ranks = sorted({layer.rank for layer in layers.values()})
    alphas = sorted({layer.alpha for layer in layers.values()})
    header = {  # kohya's training metadata keys that webui shows
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "dynamic",
        "ss_network_alpha": str(alphas[0]) if len(alphas) == 1 else "dynamic",
    }
    save_file(tensors, str(file), metadata=header)
    return Path(file)


# -- diffusers ------------------------------------------------------------------------------------
_DIFFUSERS_KEY = re.compile(r"(?:unet\.)?(.+)\.(lora\.down|lora\.up|lora_A|lora_B)\.weight")


def _diffusers_layers(
    path: Path,
    tensors: dict[str, torch.Tensor],
    header: Mapping[str, str],
    default_alpha: float | None,
) -> dict[str, LoRALayer]:
    if any(key.startswith(("text_encoder.", "text_encoder_2.")) for key in tensors):
        raise ValueError(
            f"{path} adapts the text encoder too; alignkit trains and loads UNet LoRAs only"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        found = _DIFFUSERS_KEY.fullmatch(key)
        if found is None:
            raise ValueError(
                f"{path}: key {key!r} is neither a diffusers nor a kohya LoRA weight; "
                "pass a LoRA saved by diffusers, peft, alignkit or kohya/webui"
            )
        side = "down" if found[2] in ("lora.down", "lora_A") else "up"
        parts.setdefault(found[1], {})[side] = tensor
    config = _adapter_metadata(header)
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        raise ValueError(
            f"{path}: its metadata sets per-module ranks or alphas (rank_pattern/alpha_pattern), "
            "which alignkit does not read; export it with one rank and alpha for all modules"
        )
    layers = {}
    for module, pair in sorted(parts.items()):
        if set(pair) != {"down", "up"}:
            raise ValueError(f"{path}: {module} lacks its down or up weight")
        rank = pair["down"].shape[0]
        alpha = config.get("lora_alpha", default_alpha if default_alpha is not None else rank)
        layers[module] = LoRALayer(pair["down"], pair["up"], float(alpha))
    return layers


def _adapter_metadata(header: Mapping[str, str]) -> dict:
    """The UNet's LoraConfig settings from diffusers' header (keys prefixed ``unet.``)."""
    raw = header.get(METADATA_KEY)
    if not raw:
        return {}
    packed = json.loads(raw)
    return {key.removeprefix("unet."): value for key, value in packed.items()}


def adapter_metadata(rank: int, alpha: float, target_modules: list[str]) -> dict:
    """What diffusers needs to rebuild the adapter's LoraConfig, alpha included."""
    return {"r": rank, "lora_alpha": alpha, "target_modules": list(target_modules)}


def diffusers_layer_dict(layers: Mapping[str, LoRALayer]) -> dict[str, torch.Tensor]:
    """``<path>.lora.down.weight`` / ``.lora.up.weight`` tensors, as ``save_lora_weights``
    takes them (it adds the ``unet.`` prefix)."""
    tensors = {}
    for path, layer in sorted(layers.items()):
        tensors[f"{path}.lora.down.weight"] = layer.down.float().contiguous()
        tensors[f"{path}.lora.up.weight"] = layer.up.float().contiguous()
    return tensors


def merged_weight(weight: torch.Tensor, layer: LoRALayer) -> torch.Tensor:
    """``weight + (alpha / rank) * up @ down``, for linear and convolution weights alike."""
    delta = layer.up.flatten(1).double() @ layer.down.flatten(1).double()
    return (weight.double() + layer.scale * delta.reshape(weight.shape)).to(weight.dtype)
