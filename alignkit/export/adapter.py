"""``--format diffusers``: a folder with ``pytorch_lora_weights.safetensors`` for
``pipeline.load_lora_weights(folder)``, its header carrying rank, alpha and target modules
(so alpha != rank loads right; runs saved before the header existed gain it here)."""

from __future__ import annotations

from pathlib import Path

from alignkit.export.run_folder import RunFolder
from alignkit.models.lora import write_diffusers_file


def export_diffusers(run: RunFolder, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_diffusers_file(
        run.lora_layers(), run.model.family, out, list(run.model.lora.target_modules)
    )
    return out
