"""Optimizer and learning-rate schedule from ``trainer.*`` settings."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from omegaconf import DictConfig, OmegaConf

from alignkit.config import TrainerConfig

OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "custom")
#: Arguments a custom optimizer gets from other ``trainer.*`` keys, never from its kwargs.
_SET_BY_TRAINER = {
    "params": "the trainer (the trainable weights)",
    "lr": "trainer.lr",
    "weight_decay": "trainer.weight_decay",
}
_SCHEDULES = {"constant": "constant", "warmup": "constant_with_warmup", "cosine": "cosine"}


def build_optimizer(cfg: TrainerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise ValueError(
            "the model has no trainable parameters (check model.finetune / model.lora)"
        )
    if cfg.optimizer != "custom" and (cfg.optimizer_target or cfg.optimizer_kwargs):
        raise ValueError(
            f"trainer.optimizer_target / trainer.optimizer_kwargs are set but "
            f"trainer.optimizer={cfg.optimizer!r}: set trainer.optimizer=custom to use them"
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, **_adam_settings(cfg))
    if cfg.optimizer == "adamw8bit":
        return adamw_8bit(cfg, params)
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
    if cfg.optimizer == "custom":
        return custom_optimizer(cfg, params)
    raise ValueError(
        f"unknown trainer.optimizer={cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
    )


def _adam_settings(cfg: TrainerConfig) -> dict:
    return {
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_eps,
        "weight_decay": cfg.weight_decay,
    }


def adamw_8bit(cfg: TrainerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW with 8-bit moments: a quarter of AdamW's state memory, CUDA only."""
    try:
        import bitsandbytes
    except ImportError:
        raise ValueError(
            "trainer.optimizer=adamw8bit needs the bitsandbytes package and a CUDA GPU: "
            "`pip install bitsandbytes` on a machine with CUDA, or use trainer.optimizer=adamw"
        ) from None
    devices = sorted({p.device.type for p in params})
    if devices != ["cuda"]:
        raise ValueError(
            f"trainer.optimizer=adamw8bit needs the weights on a CUDA GPU (they are on "
            f"{', '.join(devices)}): bitsandbytes' 8-bit AdamW runs on CUDA only; use "
            "trainer.optimizer=adamw here"
        )
    return bitsandbytes.optim.AdamW8bit(params, lr=cfg.lr, **_adam_settings(cfg))


def custom_optimizer(cfg: TrainerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``trainer.optimizer_target`` with ``trainer.optimizer_kwargs``, checked before the call."""
    optimizer_class = _optimizer_class(cfg.optimizer_target)
    accepted = inspect.signature(optimizer_class).parameters
    kwargs = _kwargs_dict(cfg.optimizer_kwargs)
    _check_kwargs(cfg.optimizer_target, kwargs, accepted)
    if "weight_decay" in accepted:
        kwargs["weight_decay"] = cfg.weight_decay
    try:
        return optimizer_class(params, lr=cfg.lr, **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"trainer.optimizer_target={cfg.optimizer_target} rejected "
            f"trainer.optimizer_kwargs={_kwargs_dict(cfg.optimizer_kwargs)}: {error}"
        ) from None


def _optimizer_class(target: str | None) -> type[torch.optim.Optimizer]:
    if not target:
        raise ValueError(
            "trainer.optimizer=custom needs trainer.optimizer_target, the dotted path of a "
            "torch.optim.Optimizer subclass, e.g. trainer.optimizer_target=torch.optim.SGD"
        )
    found = _import_dotted(target)
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        if found is None:
            what = "nothing importable"
        else:
            what = f"a {'class' if isinstance(found, type) else type(found).__name__}"
        raise ValueError(
            f"trainer.optimizer_target={target!r} names {what}, not a torch.optim.Optimizer "
            "subclass; give the dotted path of one, e.g. torch.optim.SGD"
        )
    return found


def _import_dotted(path: str) -> object | None:
    """``package.module.Name`` -> the object, as Hydra's ``_target_`` resolves it; or None."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError:
        return None


def _kwargs_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, dict):
        raise ValueError(
            f"trainer.optimizer_kwargs={value!r} is not a dict; pass one, e.g. "
            "'trainer.optimizer_kwargs={momentum: 0.9}'"
        )
    return dict(value)  # a copy: the weight decay is added to it


def _check_kwargs(target: str | None, kwargs: dict, accepted) -> None:
    owned = sorted(set(kwargs) & _SET_BY_TRAINER.keys())
    if owned:
        sources = "; ".join(f"{name} comes from {_SET_BY_TRAINER[name]}" for name in owned)
        raise ValueError(f"trainer.optimizer_kwargs may not set {', '.join(owned)}: {sources}")
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    valid = sorted(set(accepted) - {"params"} - _SET_BY_TRAINER.keys())
    unknown = sorted(set(kwargs) - set(accepted)) if not takes_any else []
    if unknown:
        raise ValueError(
            f"trainer.optimizer_kwargs: {target} takes no argument(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(valid)}"
        )


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
