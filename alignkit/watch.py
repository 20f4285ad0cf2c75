"""Watching training: every ``eval.every`` optimizer steps, a fixed set of prompts x seeds is
sampled with the base and the policy, and the sinks get the grid (base | policy) and the
reward means, so a drift or a collapse shows while the run goes on, not only at its end.

The Trainer calls the watch after an optimizer step. Only the main process builds one, and
it samples through the bare UNet, never the distributed wrapper, so it starts no collective
operation that the other processes would have to join.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from alignkit.config import EvalConfig
from alignkit.data.prompts import GENERAL, load_prompt_list
from alignkit.evaluation import image_grid
from alignkit.models import Backbone
from alignkit.rewards import REWARDS, Reward, build_reward
from alignkit.sampling import generate_images
from alignkit.sinks import MetricsSink

#: The image name the sinks receive: ``samples/step_XXXXXXXX.png`` in the run folder.
SAMPLES = "samples"


def watch_prompts(cfg: EvalConfig) -> list[str]:
    """The first ``every_prompts`` of ``eval.prompts``; unset (a real model whose config
    names none), of the ``general`` set."""
    return load_prompt_list(cfg.prompts or GENERAL)[: cfg.every_prompts]


@contextmanager
def bare_unet(backbone: Backbone) -> Iterator[None]:
    """Predict with the unwrapped UNet in eval mode for the duration, then restore both."""
    wrapped, training = backbone.unet_forward, backbone.unet.training
    backbone.unet_forward = backbone.unet
    backbone.unet.eval()
    try:
        yield
    finally:
        backbone.unet_forward = wrapped
        backbone.unet.train(training)


def check_watch_settings(cfg: EvalConfig) -> None:
    """Reject settings that would only fail once training reached the first look; cheap, so
    every process runs it before the model is loaded."""
    if cfg.every < 0:
        raise ValueError(f"eval.every={cfg.every} must be >= 0 (0 turns the watch off)")
    if cfg.every == 0:
        return
    for key in ("every_prompts", "every_seeds", "steps"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"eval.{key}={getattr(cfg, key)} must be at least 1 with eval.every")
    for spec in cfg.rewards:
        REWARDS.get(spec.partition("@")[0])  # name@path: a reward with its local folder
    watch_prompts(cfg)


class TrainingWatch:
    """The hook: ``watch(step)`` returns ``eval/<reward>`` scalars at a watched step (and
    logs the grid to the sinks), an empty dict otherwise. ``rewards`` are keyed by the name
    the scalars carry (``pickscore`` for ``pickscore@/models/ps``)."""

    def __init__(
        self,
        backbone: Backbone,
        cfg: EvalConfig,
        sinks: list[MetricsSink],
        rewards: dict[str, Reward],
    ) -> None:
        prompts = watch_prompts(cfg)
        self.backbone = backbone
        self.cfg = cfg
        self.sinks = sinks
        self.rewards = rewards
        self.rows, self.cols = len(prompts), cfg.every_seeds
        self.prompts = [prompt for prompt in prompts for _ in range(self.cols)]
        self.seeds = [seed for _ in prompts for seed in range(self.cols)]
        self._base: tuple[torch.Tensor, dict[str, float]] | None = None

    def _generate(self, reference: bool) -> torch.Tensor:
        with bare_unet(self.backbone):
            return generate_images(
                self.backbone,
                self.prompts,
                self.seeds,
                steps=self.cfg.steps,
                guidance=self.cfg.guidance,
                reference=reference,
                batch_size=self.cfg.batch_size,
            )

    def _scores(self, images: torch.Tensor) -> dict[str, float]:
        return {
            name: reward(images, self.prompts).float().mean().item()
            for name, reward in self.rewards.items()
        }

    def _base_samples(self) -> tuple[torch.Tensor, dict[str, float]]:
        """The base (adapters off, or the frozen copy) never changes during training, so
        its samples and scores are computed at the first look and reused."""
        if self._base is None:
            images = self._generate(reference=True)
            self._base = images, self._scores(images)
        return self._base

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, float]:
        if step % self.cfg.every:
            return {}
        base, base_scores = self._base_samples()
        policy = self._generate(reference=False)
        metrics = {}
        for name, score in self._scores(policy).items():
            metrics[f"eval/{name}"] = score
            metrics[f"eval/{name}_base"] = base_scores[name]
        picture = image_grid(base, policy, self.rows, self.cols)
        for sink in self.sinks:
            sink.log_image(step, SAMPLES, picture)
        return metrics


def build_watch(
    cfg: EvalConfig, backbone: Backbone, sinks: list[MetricsSink]
) -> TrainingWatch | None:
    """The watch when ``eval.every`` > 0 (settings already passed ``check_watch_settings``);
    built on the main process only, it loads its reward models once."""
    if cfg.every == 0:
        return None
    rewards = {spec.partition("@")[0]: build_reward(spec) for spec in cfg.rewards}
    return TrainingWatch(backbone, cfg, sinks, rewards)
