"""The algorithm registry: ``algo.name`` -> the class that turns a batch into a loss."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from alignkit.registry import Registry


class Algorithm(Protocol):
    """What the Trainer needs from an algorithm.

    ``data_kind`` names the data it consumes (``pairs`` or ``prompts``), ``config_class`` its
    schema (a dataclass extending ``AlgoConfig``); ``loss`` returns
    the scalar to minimise and the per-step metrics to log. ``generator`` drives every random
    draw (timesteps, noise) so that a resumed run repeats the uninterrupted one exactly.
    An algorithm may also define ``prepare(batches)``, called once before training with the
    batch source (e.g. RPO embeds the cached dataset with CLIP there), and
    ``before_fit(plan)``, called by ``Trainer.fit`` with the micro-batches this process will
    train on (``alignkit.trainer.FitPlan``; DPO and RPO precompute reference errors there).
    """

    data_kind: ClassVar[str]
    config_class: ClassVar[type]

    def loss(
        self, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


ALGORITHMS: Registry[type] = Registry("algorithm")
