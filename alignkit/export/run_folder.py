"""A finished run folder as the exporters see it: its model settings and its final weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignkit.config import ModelConfig
from alignkit.models.lora_files import DIFFUSERS_WEIGHT_NAME, LoRALayer, read_lora_file
from alignkit.run_record import read_run_record


@dataclass
class RunFolder:
    path: Path
    config: DictConfig  # the run's composed config (.hydra/config.yaml), resolved
    model: ModelConfig

    @property
    def is_lora(self) -> bool:
        return self.model.finetune == "lora"

    @property
    def final_lora(self) -> Path:
        return self.path / "final" / DIFFUSERS_WEIGHT_NAME

    @property
    def final_unet(self) -> Path:
        return self.path / "final" / "unet"

    def lora_layers(self) -> dict[str, LoRALayer]:
        """The final adapter; alpha from the run's config (files older than the header
        metadata do not carry it)."""
        if not self.is_lora:
            raise ValueError(
                f"{self.path} is a full fine-tuning run (model.finetune=full): it has no LoRA "
                "to export; use --format merged"
            )
        _, layers = read_lora_file(self.final_lora, {}, default_alpha=self.model.lora.alpha)
        return layers


def open_run(run_dir: str | Path) -> RunFolder:
    """The run folder at ``run_dir``, checked to hold a config and final weights."""
    path = Path(run_dir).expanduser()
    config_file = path / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a run folder (no .hydra/config.yaml): pass the folder a "
            "`python -m alignkit ... output_dir=...` run wrote"
        )
    config = read_run_record(config_file, [])
    run = RunFolder(path, config, OmegaConf.to_object(config.model))  # type: ignore[arg-type]
    final = run.final_lora if run.is_lora else run.final_unet
    if not final.exists():
        raise FileNotFoundError(
            f"{path} has no final weights ({final.relative_to(path)} is missing): the run has "
            "not finished; finish it (rerun its command with the same output_dir) first"
        )
    return run
