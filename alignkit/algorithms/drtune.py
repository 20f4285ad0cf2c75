"""DRTune and its reward-backpropagation peers on prompts (docs/algorithms.md, "DRTune and its
peers").

Each step samples ``x_T`` from the trainer's generator, rolls the policy out with the
scheme's plan (alignkit/rollout.py), decodes the result with gradients and maximises the
reward of those pixels. ``algo.scheme`` picks DRTune, AlignProp, DRaFT-K, DRaFT-LV or ReFL on
the one rollout implementation, so an ablation changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from alignkit.algorithms.registry import ALGORITHMS
from alignkit.config import AlgoConfig
from alignkit.data.prompts import PromptBatch
from alignkit.models import Backbone
from alignkit.rewards import Reward
from alignkit.rollout import (
    SCHEMES,
    RolloutPlan,
    alignprop_plan,
    draft_lv_plan,
    drtune_plan,
    last_k_plan,
    refl_plan,
    rollout,
)


@dataclass
class DRTuneConfig(AlgoConfig):
    scheme: str = "drtune"  # drtune | alignprop | draft_k | draft_lv | refl
    steps: int = 25  # T: DDIM steps of the rollout (eta = 0)
    guidance: float = 7.5  # classifier-free guidance during the rollout (1 = none)
    train_steps: int = 3  # K: drtune's equally spaced steps; draft_k's last K
    early_stop_fraction: float = 0.4  # drtune: m ~ U{1..round(f T)}, stop at T - m
    truncation_min: int = 1  # alignprop: K ~ U{min..max} last steps
    truncation_max: int | None = None  # None = steps
    refl_window: int = 10  # refl: the grad step s ~ U{T - window .. T - 1}
    lv_samples: int = 2  # draft_lv: re-noisings of the final sample
    hinge_margin: float | None = None  # loss relu(margin - r) as ReFL; None: loss -r
    reward_scale: float = 1.0  # multiplies the loss (rewards differ in scale)
    gradient_checkpointing: bool = True  # recompute the grad UNet calls and the VAE decode


def make_plan(cfg: DRTuneConfig, generator: torch.Generator) -> RolloutPlan:
    """The scheme's plan for one rollout, drawn from ``generator``."""
    if cfg.scheme == "drtune":
        return drtune_plan(cfg.steps, cfg.train_steps, cfg.early_stop_fraction, generator)
    if cfg.scheme == "alignprop":
        return alignprop_plan(cfg.steps, cfg.truncation_min, cfg.truncation_max, generator)
    if cfg.scheme == "draft_k":
        return last_k_plan(cfg.steps, cfg.train_steps)
    if cfg.scheme == "draft_lv":
        return draft_lv_plan(cfg.steps, cfg.lv_samples)
    if cfg.scheme == "refl":
        return refl_plan(cfg.steps, cfg.refl_window, generator)
    raise ValueError(f"unknown algo.scheme={cfg.scheme!r}; choose one of {', '.join(SCHEMES)}")


def reward_loss(scores: torch.Tensor, hinge_margin: float | None) -> torch.Tensor:
    """``-mean(r)``, or ReFL's hinge ``mean(relu(margin - r))``."""
    if hinge_margin is None:
        return -scores.mean()
    return torch.relu(hinge_margin - scores).mean()


@ALGORITHMS.register("drtune")
class RewardBackpropagation:
    """Maximise a differentiable reward of the policy's own rollouts (one scheme per run)."""

    data_kind = "prompts"
    config_class = DRTuneConfig
    needs_reward = True

    def __init__(self, cfg: DRTuneConfig, backbone: Backbone, reward: Reward) -> None:
        make_plan(cfg, torch.Generator().manual_seed(0))  # a bad setting fails before training
        if cfg.reward_scale <= 0:
            raise ValueError(f"algo.reward_scale={cfg.reward_scale} must be positive")
        self.cfg = cfg
        self.backbone = backbone
        self.reward = reward
        factor = 2 ** (len(backbone.vae.config.block_out_channels) - 1)
        size = backbone.resolution // factor
        self.latent_shape = (backbone.unet.config.in_channels, size, size)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.cfg.gradient_checkpointing:
            return checkpoint(self.backbone.decode_latents_with_grad, latents, use_reentrant=False)
        return self.backbone.decode_latents_with_grad(latents)

    def loss(self, batch: PromptBatch, generator: torch.Generator):
        plan = make_plan(self.cfg, generator)
        noise = torch.randn((len(batch), *self.latent_shape), generator=generator)
        result = rollout(
            self.backbone,
            batch.prompts,
            noise,
            plan,
            self.cfg.guidance,
            generator=generator,
            use_checkpoint=self.cfg.gradient_checkpointing,
        )
        scores = self.reward(self.decode(result.latents), result.prompts).float()
        loss = self.cfg.reward_scale * reward_loss(scores, self.cfg.hinge_margin)
        metrics = {
            "reward": scores.detach().mean().item(),
            "rollout_calls": float(plan.calls),
            "grad_calls": float(len(plan.grad_steps) or plan.renoise),
        }
        return loss, metrics
