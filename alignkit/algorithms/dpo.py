"""Diffusion-DPO and SFT on preference pairs (docs/algorithms.md, "Diffusion-DPO" and "SFT")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from alignkit.algorithms.errors import denoising_errors, noise_and_timesteps, pair_errors
from alignkit.algorithms.reference_errors import (
    FOLDER,
    ReferenceErrors,
    batch_noise,
    claim_folder,
    reference_settings,
)
from alignkit.algorithms.registry import ALGORITHMS
from alignkit.config import AlgoConfig
from alignkit.data.batch import PairBatch
from alignkit.losses import diffusion_dpo_loss, dpo_logits, implicit_accuracy
from alignkit.models import Backbone

if TYPE_CHECKING:
    from alignkit.trainer import FitPlan

#: algo.reference: how the reference model's errors are obtained
REFERENCE_CHOICES = ("live", "precomputed")


@dataclass
class DPOConfig(AlgoConfig):
    beta: float = 5000.0
    reference: str = "live"
    reference_micro_batches: int = 1  # with reference=precomputed: micro-batches per pass
    reference_dir: str | None = None  # with reference=precomputed: None = the run folder's


@dataclass
class SFTConfig(AlgoConfig):
    pass


@ALGORITHMS.register("dpo")
class DiffusionDPO:
    """One t and one eps per pair, shared by winner and loser; the reference is the base model."""

    data_kind = "pairs"
    config_class = DPOConfig

    def __init__(self, cfg: DPOConfig, backbone: Backbone) -> None:
        if cfg.reference not in REFERENCE_CHOICES:
            raise ValueError(
                f"algo.reference={cfg.reference!r} is unknown; choose live (the reference pass "
                "in every step) or precomputed (all reference errors computed before training)"
            )
        if cfg.reference_micro_batches < 1:
            raise ValueError(
                f"algo.reference_micro_batches={cfg.reference_micro_batches} must be at least 1 "
                "(micro-batches per forward pass when the reference errors are computed ahead)"
            )
        self.beta = cfg.beta
        self.backbone = backbone
        self.per_pass = cfg.reference_micro_batches
        self.precomputed: ReferenceErrors | None = None
        self.seed = 0
        self.reference = cfg.reference
        self.reference_dir = cfg.reference_dir

    def before_fit(self, plan: FitPlan) -> None:
        """With ``algo.reference=precomputed``: the reference errors of every micro-batch left."""
        if self.reference != "precomputed":
            return
        folder = Path(self.reference_dir or Path(plan.run_dir) / FOLDER).expanduser()
        claim_folder(folder, reference_settings(plan, self.backbone))
        self.seed = plan.seed
        self.precomputed = ReferenceErrors(folder)
        self.precomputed.compute(self.backbone, plan, self.per_pass)

    def loss(self, batch: PairBatch, generator: torch.Generator):
        if self.reference == "precomputed":
            if self.precomputed is None:
                raise RuntimeError(
                    "algo.reference=precomputed: the reference errors are not computed yet; "
                    "Trainer.fit does that first (or call Trainer.prepare_algorithm())"
                )
            ref_w, ref_l = self.precomputed.lookup(batch.index)
            t, noise = batch_noise(self.backbone, batch.latents_w, self.seed, batch.index)
            model_w, model_l, _, _ = pair_errors(
                self.backbone, batch, t, noise, with_reference=False
            )
            ref_w, ref_l = ref_w.to(model_w.device), ref_l.to(model_w.device)
        else:
            t, noise = noise_and_timesteps(self.backbone, batch.latents_w, generator)
            model_w, model_l, ref_w, ref_l = pair_errors(self.backbone, batch, t, noise)
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
