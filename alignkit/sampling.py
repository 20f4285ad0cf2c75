"""DDIM sampling on a Backbone: the policy, or the reference (``reference=True``).

The step is written out (not delegated to a diffusers scheduler) because algorithms need
its pieces — ``x0_hat``, ``eps_hat``, the mean and the noise scale — and the reference and
policy must share one code path. Timesteps and alphas come from diffusers' DDIMScheduler
built on the model's own scheduler config, so the output matches diffusers' DDIM pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from alignkit.models import Backbone
from alignkit.models.text import default_micro_cond


@dataclass
class DDIMSchedule:
    timesteps: torch.Tensor  # [S], descending
    alpha_t: torch.Tensor  # [S] alphas_cumprod at each timestep
    alpha_prev: torch.Tensor  # [S] alphas_cumprod at the step it lands on

    @classmethod
    def for_backbone(cls, backbone: Backbone, steps: int) -> DDIMSchedule:
        ddim = DDIMScheduler.from_config(backbone.scheduler.config)
        ddim.set_timesteps(steps)
        alphas = ddim.alphas_cumprod.float()
        stride = ddim.config.num_train_timesteps // steps
        previous = ddim.timesteps - stride
        alpha_prev = torch.where(
            previous >= 0, alphas[previous.clamp(min=0)], ddim.final_alpha_cumprod.float()
        )
        return cls(ddim.timesteps, alphas[ddim.timesteps], alpha_prev)


def split_prediction(
    prediction_type: str, output: torch.Tensor, x_t: torch.Tensor, alpha_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output -> (x0_hat, eps_hat) for epsilon or v-prediction."""
    a = alpha_t.reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t)
    if prediction_type == "epsilon":
        eps = output
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * output
        eps = a.sqrt() * output + (1 - a).sqrt() * x_t
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return x0, eps


def ddim_sigma(alpha_t: torch.Tensor, alpha_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """``eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)``."""
    return eta * ((1 - alpha_prev) / (1 - alpha_t)).sqrt() * (1 - alpha_t / alpha_prev).sqrt()


def ddim_mean(
    x0: torch.Tensor, eps: torch.Tensor, alpha_prev: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """``sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat``."""
    shape = (-1, *([1] * (x0.dim() - 1)))
    a_prev, sigma = alpha_prev.reshape(shape).to(x0), sigma.reshape(shape).to(x0)
    return a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One latent per seed, each from its own generator (reproducible per image)."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


@torch.no_grad()
def sample_latents(
    backbone: Backbone,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    guidance: float = 3.0,
    reference: bool = False,
) -> torch.Tensor:
    """DDIM (eta = 0) with classifier-free guidance; returns the final latents."""
    schedule = DDIMSchedule.for_backbone(backbone, steps)
    factor = 2 ** (len(backbone.vae.config.block_out_channels) - 1)
    size = backbone.resolution // factor
    channels = backbone.unet.config.in_channels
    x = initial_noise(seeds, (channels, size, size)).to(backbone.device)
    batch = len(prompts)
    text = backbone.encode_prompts([""] * batch + list(prompts))
    micro = default_micro_cond(2 * batch, backbone.resolution, backbone.device)
    for t, alpha_t, alpha_prev in zip(schedule.timesteps, schedule.alpha_t, schedule.alpha_prev):
        timesteps = t.repeat(2 * batch)
        out = backbone.predict(torch.cat([x, x]), timesteps, text, micro, reference=reference)
        uncond, cond = out.chunk(2)
        guided = uncond + guidance * (cond - uncond)
        x0, eps = split_prediction(backbone.prediction_type, guided, x, alpha_t)
        x = ddim_mean(x0, eps, alpha_prev, torch.zeros(()))
    return x


def generate_images(
    backbone: Backbone,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    guidance: float = 3.0,
    reference: bool = False,
    batch_size: int = 32,
) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] on the CPU, generated in batches."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        latents = sample_latents(backbone, prompts[chunk], seeds[chunk], steps, guidance, reference)
        images.append(backbone.decode_latents(latents).cpu())
    return torch.cat(images)
