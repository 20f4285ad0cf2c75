"""``--format merged``: a whole diffusers pipeline folder with the LoRA fused into the UNet
(or the fine-tuned UNet in place), for ``from_pretrained`` with no LoRA loading at all.

The base is rebuilt from the run's model settings: loaded from ``model.path`` when pretrained;
for ``model.init=random`` the tiny architecture is rebuilt from its fixed seed, which gives the
run's base weights again under the same torch and diffusers versions.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from alignkit.export.run_folder import RunFolder
from alignkit.models import build_components
from alignkit.models.components import Components, pipeline_from_components
from alignkit.models.loading import check_model_path
from alignkit.models.lora_files import LoRALayer, merged_weight


def fuse_layers(unet: torch.nn.Module, layers: dict[str, LoRALayer]) -> None:
    """Add each layer's ``scale * up @ down`` to its module's weight, in place."""
    with torch.no_grad():
        for path, layer in layers.items():
            module = unet.get_submodule(path)
            module.weight.copy_(merged_weight(module.weight, layer))


def base_scheduler(run: RunFolder, components: Components):
    """The base model's own sampling scheduler (its class, not the training DDPM), with the
    run's prediction type."""
    override = {"prediction_type": run.model.prediction_type} if run.model.prediction_type else {}
    if run.model.init != "pretrained":
        return DDPMScheduler.from_config(components.scheduler.config, **override)
    config = DDPMScheduler.load_config(
        check_model_path(run.model.path), subfolder="scheduler", revision=run.model.revision
    )
    kind = getattr(diffusers, str(config.get("_class_name")), DDPMScheduler)
    return kind.from_config(config, **override)


def export_merged(run: RunFolder, out: Path) -> Path:
    components = build_components(run.model)
    if run.is_lora:
        fuse_layers(components.unet, run.lora_layers())
    else:
        components.unet = UNet2DConditionModel.from_pretrained(run.final_unet)
    pipeline = pipeline_from_components(components, base_scheduler(run, components))
    pipeline.save_pretrained(out, safe_serialization=True)
    return out
