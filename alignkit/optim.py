"""Optimizer and learning-rate schedule from ``trainer.*`` settings."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from alignkit.config import TrainerConfig

_SCHEDULES = {"constant": "constant", "warmup": "constant_with_warmup", "cosine": "cosine"}


def build_optimizer(cfg: TrainerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise ValueError(
            "the model has no trainable parameters (check model.finetune / model.lora)"
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            params,
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            relative_step=False,
            scale_parameter=False,
            warmup_init=False,
        )
    raise ValueError(f"unknown trainer.optimizer={cfg.optimizer!r}; choose 'adamw' or 'adafactor'")


def build_lr_schedule(cfg: TrainerConfig, optimizer: torch.optim.Optimizer):
    """Stepped once per optimizer step (not per process or micro-batch)."""
    if cfg.lr_schedule not in _SCHEDULES:
        raise ValueError(
            f"unknown trainer.lr_schedule={cfg.lr_schedule!r}; choose one of {sorted(_SCHEDULES)}"
        )
    name = _SCHEDULES[cfg.lr_schedule]
    if name == "constant" and cfg.warmup_steps > 0:
        name = "constant_with_warmup"
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.max_steps,
    )
