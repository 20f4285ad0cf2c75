"""Structured-config schemas, registered in Hydra's ConfigStore.

Every YAML option of a group starts from one of these schemas (``defaults: [<schema>]``),
so a misspelt key fails at compose time with a message naming it. Defaults here are the
neutral ones; the YAML files carry the recipe values and their provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 8.0
    target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"]
    )
    # peft's init_lora_weights: "gaussian" | "true" (kaiming A, zero B) | "pissa" | ...
    init: str = "gaussian"
    dropout: float = 0.0


@dataclass
class ModelConfig:
    name: str = MISSING
    family: str = "sd"  # sd (SD1.x/2.x family) | sdxl
    path: Optional[str] = None  # hub id or local diffusers folder
    init: str = "pretrained"  # pretrained | random (tiny architectures built in process)
    revision: Optional[str] = None
    variant: Optional[str] = None
    prediction_type: Optional[str] = None  # override the scheduler's: epsilon | v_prediction
    resolution: int = 512
    finetune: str = "lora"  # lora | full
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    reference_device: str = "same"  # full fine-tuning only: same | cpu
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    name: str = MISSING
    kind: str = "pairs"  # pairs | prompts
    path: Optional[str] = None  # hub dataset id or local folder of parquet files
    split: str = "train"
    max_rows: Optional[int] = None
    drop_ties: bool = True
    caption_dropout: float = 0.0
    random_crop: bool = False  # False: centre crop
    random_flip: bool = True
    cache: bool = True
    cache_dir: Optional[str] = None  # default: ~/.cache/alignkit/latents
    max_corrupt_fraction: float = 0.05
    encode_batch_size: int = 8


@dataclass
class AlgoConfig:
    name: str = MISSING


@dataclass
class DPOConfig(AlgoConfig):
    beta: float = 5000.0


@dataclass
class SFTConfig(AlgoConfig):
    pass


@dataclass
class RewardConfig:
    name: str = "none"


@dataclass
class LoggerConfig:
    name: str = "jsonl"  # jsonl | wandb | tensorboard (metrics.jsonl is always written)
    project: str = "alignkit"
    entity: Optional[str] = None
    mode: Optional[str] = None  # wandb: online | offline; None = online iff an API key is set


@dataclass
class TrainerConfig:
    max_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    lr_schedule: str = "constant"  # constant | warmup | cosine
    warmup_steps: int = 0
    optimizer: str = "adamw"  # adamw | adafactor
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1
    progress_bar: bool = True
    cpu: bool = False  # force CPU even when an accelerator is present


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    algo: Any = MISSING
    reward: RewardConfig = MISSING
    logger: LoggerConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    output_dir: str = MISSING


GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "reward": RewardConfig,
    "logger": LoggerConfig,
}

ALGO_SCHEMAS: dict[str, type] = {"dpo": DPOConfig, "sft": SFTConfig}


def register_configs() -> None:
    """Store every schema so that YAML options can name it in their defaults list."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=f"schema/{group}", name=group, node=schema)
    for name, schema in ALGO_SCHEMAS.items():
        store.store(group="schema/algo", name=name, node=schema)
