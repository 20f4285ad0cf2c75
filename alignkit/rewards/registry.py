"""The reward registry: ``reward`` names -> callables scoring images against prompts."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

import torch

from alignkit.registry import Registry


class Reward(Protocol):
    """Images ``[B, 3, H, W]`` in [0, 1] and their prompts -> scores ``[B]`` (higher is better).

    ``differentiable`` says whether gradients flow from the scores to the pixels.
    """

    differentiable: ClassVar[bool]

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


#: name -> a reward class or factory; its keyword arguments are the ``reward.*`` options.
REWARDS: Registry[Callable[..., Reward]] = Registry("reward")
