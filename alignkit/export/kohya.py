"""``--format kohya``: one ``.safetensors`` that webui/Forge and ComfyUI load as a LoRA.

Keys are ``lora_unet_<diffusers module path, '.' -> '_'>`` for SD1.5 and SDXL alike: webui,
Forge and ComfyUI map these names onto their own UNets, and diffusers' kohya converter reads
them back. Each module's ``.alpha`` is the run's ``model.lora.alpha``: the loaders scale by
``alpha / rank``, so writing the rank there would silently change the strength.
"""

from __future__ import annotations

from pathlib import Path

from alignkit.export.run_folder import RunFolder
from alignkit.models.lora_files import write_kohya_file


def export_kohya(run: RunFolder, out: Path) -> Path:
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out} must end in .safetensors for --format kohya")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_kohya_file(run.lora_layers(), out)
