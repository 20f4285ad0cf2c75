"""Reward models; each registers itself by name on import.

``build_reward("pickscore", path=...)`` builds one by name (``"name@path"`` is shorthand for
a path, handy in ``eval.rewards`` lists); ``build_configured_reward(cfg.reward)`` builds the
``reward`` config group's choice.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from alignkit.rewards import (  # noqa: F401  (each registers its rewards)
    aesthetic,
    clip,
    clip_style,
    combo,
    hps,
    lowlevel,
    oracle,
    pickscore,
    preference,
    style,
)
from alignkit.rewards.registry import REWARDS, Reward

__all__ = ["REWARDS", "Reward", "build_configured_reward", "build_reward"]

#: RewardConfig fields handed to the reward's constructor when set.
OPTION_KEYS = (
    "path",
    "checkpoint",
    "model_name",
    "processor",
    "head",
    "weights",
    "options",
    "style",
    "style_prompt",
    "neutral_prompt",
)


def build_reward(spec: str, **options: Any) -> Reward:
    """A reward by name (or ``name@path``), with constructor ``options`` checked by name."""
    name, _, path = spec.partition("@")
    if path:
        options["path"] = path
    factory = REWARDS.get(name)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(f"reward.{key}" for key in accepted) or "no options"
        raise ValueError(
            f"reward={name} does not use {', '.join(f'reward.{k}' for k in unknown)}; "
            f"it takes {takes}"
        )
    return factory(**options)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts (nested), other values unchanged."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def build_configured_reward(cfg: Any) -> Reward | None:
    """The ``reward`` group's choice (None for ``reward=none``), with the options it sets."""
    if cfg.name == "none":
        return None
    options = {}
    for key in OPTION_KEYS:
        value = getattr(cfg, key, None)
        if value is None or (isinstance(value, Mapping) and not value):
            continue
        options[key] = _plain(value)
    return build_reward(cfg.name, **options)
