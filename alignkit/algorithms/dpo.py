"""Diffusion-DPO and SFT on preference pairs (docs/algorithms.md, "Diffusion-DPO" and "SFT")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alignkit.algorithms.errors import denoising_errors, noise_and_timesteps
from alignkit.algorithms.reference_errors import ReferenceConfig, ReferenceSide
from alignkit.algorithms.registry import ALGORITHMS
from alignkit.config import AlgoConfig
from alignkit.data.batch import PairBatch
from alignkit.losses import diffusion_dpo_loss, dpo_logits, implicit_accuracy
from alignkit.models import Backbone

if TYPE_CHECKING:
    from alignkit.trainer import FitPlan


@dataclass
class DPOConfig(ReferenceConfig):
    beta: float = 5000.0


@dataclass
class SFTConfig(AlgoConfig):
    pass


@ALGORITHMS.register("dpo")
class DiffusionDPO:
    """One t and one eps per pair, shared by winner and loser; the reference is the base model."""

    data_kind = "pairs"
    config_class = DPOConfig

    def __init__(self, cfg: DPOConfig, backbone: Backbone) -> None:
        self.beta = cfg.beta
        self.backbone = backbone
        self.reference = ReferenceSide(cfg, backbone, one_timestep=False)

    def before_fit(self, plan: FitPlan) -> None:
        self.reference.before_fit(plan)

    def loss(self, batch: PairBatch, generator: torch.Generator):
        model_w, model_l, ref_w, ref_l = self.reference.pair_errors(batch, generator)
        loss = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, self.beta)
        logits = dpo_logits(model_w.detach(), model_l.detach(), ref_w, ref_l, self.beta)
        metrics = {
            "implicit_acc": implicit_accuracy(logits).item(),
            "model_mse_w": model_w.mean().item(),
            "model_mse_l": model_l.mean().item(),
            "ref_mse_w": ref_w.mean().item(),
            "ref_mse_l": ref_l.mean().item(),
        }
        return loss, metrics


@ALGORITHMS.register("sft")
class SupervisedFineTuning:
    """Plain denoising loss on the winners only."""

    data_kind = "pairs"
    config_class = SFTConfig

    def __init__(self, cfg: SFTConfig, backbone: Backbone) -> None:
        self.backbone = backbone

    def loss(self, batch: PairBatch, generator: torch.Generator):
        t, noise = noise_and_timesteps(self.backbone, batch.latents_w, generator)
        model_w, _ = denoising_errors(
            self.backbone,
            batch.latents_w,
            batch.text,
            batch.micro_cond,
            t,
            noise,
            with_reference=False,
        )
        loss = model_w.mean()
        return loss, {"model_mse_w": loss.item()}
