"""Tiny backbones and synthetic batches for tests that do not need the data layer."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, StableDiffusionPipeline

from alignkit.algorithms import build_algorithm
from alignkit.algorithms.dpo import DPOConfig
from alignkit.config import ModelConfig, TrainerConfig
from alignkit.data.batch import PairBatch
from alignkit.models import Backbone, build_backbone
from alignkit.models.text import default_micro_cond
from alignkit.sampling import initial_noise
from alignkit.trainer import Trainer

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a white star"]


def tiny_backbone(family: str = "sd", **overrides) -> Backbone:
    cfg = ModelConfig(name=f"tiny_{family}", family=family, init="random", resolution=32)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return build_backbone(cfg)


class SyntheticPairs:
    """Deterministic random latent pairs: ``batch(index)`` is a pure function of index."""

    def __init__(self, backbone: Backbone, batch_size: int = 2) -> None:
        self.backbone = backbone
        self.batch_size = batch_size
        self.text = backbone.encode_prompts(PROMPTS)

    def batch(self, index: int) -> PairBatch:
        generator = torch.Generator().manual_seed(index)
        shape = (self.batch_size, 4, 8, 8)
        rows = [(index * self.batch_size + i) % len(PROMPTS) for i in range(self.batch_size)]
        return PairBatch(
            latents_w=torch.randn(shape, generator=generator),
            latents_l=torch.randn(shape, generator=generator),
            text={k: v[rows] for k, v in self.text.items()},
            micro_cond=default_micro_cond(self.batch_size, 32),
            prompts=[PROMPTS[r] for r in rows],
            index=index,
        )


def tiny_trainer(
    backbone: Backbone,
    run_dir,
    algo=None,
    seed: int = 0,
    accelerator: Accelerator | None = None,
    **trainer_overrides,
) -> Trainer:
    cfg = TrainerConfig(max_steps=3, batch_size=2, lr=1e-3, progress_bar=False)
    for key, value in trainer_overrides.items():
        setattr(cfg, key, value)
    algo = algo or DPOConfig(name="dpo", beta=5000.0)
    config = {"trainer": vars(cfg), "algo": vars(algo), "seed": seed}
    return Trainer(
        cfg,
        backbone,
        build_algorithm(algo, backbone),
        SyntheticPairs(backbone, cfg.batch_size),
        run_dir,
        accelerator or Accelerator(cpu=True),
        seed,
        config,
    )


def diffusers_ddim_latents(
    backbone: Backbone, prompts: list[str], seeds: list[int], steps: int, guidance: float
) -> torch.Tensor:
    """The reference: diffusers' own DDIM pipeline on the backbone's modules (32 px, SD)."""
    pipeline = StableDiffusionPipeline(
        unet=backbone.unet,
        vae=backbone.vae,
        text_encoder=backbone.text_encoders[0],
        tokenizer=backbone.tokenizers[0],
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline(
        prompts,
        height=32,
        width=32,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=initial_noise(seeds, (4, 8, 8)),
        output_type="latent",
    ).images
