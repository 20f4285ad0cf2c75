"""DDIM sampling on a Backbone: the policy, or the reference (``reference=True``).

The step is written out (not delegated to a diffusers scheduler) because algorithms need
its pieces — ``x0_hat``, ``eps_hat``, the mean and the noise scale — and the reference and
policy must share one code path. Timesteps and alphas come from diffusers' DDIMScheduler
built on the model's own scheduler config, so the output matches diffusers' DDIM pipeline.
"""

from __future__ import annotations

import math
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
    text = backbone.encode_guided(prompts)
    micro = default_micro_cond(2 * batch, backbone.resolution, backbone.device)
    with backbone.sampling():
        for t, alpha_t, alpha_prev in zip(
            schedule.timesteps, schedule.alpha_t, schedule.alpha_prev
        ):
            timesteps = t.repeat(2 * batch)
            out = backbone.predict(torch.cat([x, x]), timesteps, text, micro, reference=reference)
            guided = guided_prediction(out, guidance)
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


# -- stochastic DDIM with log-probabilities (SPO, DRTune) ------------------------------------


def ddim_step_log_prob(
    x_prev: torch.Tensor,
    x0_pred: torch.Tensor,
    eps_pred: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_prev: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """Log-density ``[B]`` of ``x_prev`` under the DDIM step ``N(mu, sigma^2 I)``.

    The Gaussian log-density is averaged (not summed) over C, H, W as in SPO
    (docs/algorithms.md, "SPO"), so its scale does not depend on the latent size. ``x_prev`` is
    detached: only the mean carries the model's gradient.
    """
    if eta <= 0:
        raise ValueError(
            f"eta={eta}: a DDIM step with eta <= 0 is deterministic and has no log-probability; "
            "use eta > 0 (SPO uses 1.0)"
        )
    x0_pred, eps_pred = x0_pred.float(), eps_pred.float()
    alpha_t = torch.as_tensor(alpha_prod_t, dtype=torch.float32, device=x0_pred.device)
    alpha_prev = torch.as_tensor(alpha_prod_prev, dtype=torch.float32, device=x0_pred.device)
    alpha_t = alpha_t.expand(x0_pred.shape[0]) if alpha_t.dim() == 0 else alpha_t.reshape(-1)
    alpha_prev = (
        alpha_prev.expand(x0_pred.shape[0]) if alpha_prev.dim() == 0 else alpha_prev.reshape(-1)
    )
    sigma = ddim_sigma(alpha_t, alpha_prev, eta)
    mean = ddim_mean(x0_pred, eps_pred, alpha_prev, sigma)
    sigma = sigma.reshape(-1, *([1] * (x0_pred.dim() - 1)))
    log_density = (
        -((x_prev.detach().float() - mean) ** 2) / (2 * sigma**2)
        - sigma.log()
        - 0.5 * math.log(2 * math.pi)
    )
    return log_density.mean(dim=tuple(range(1, log_density.dim())))


def guided_prediction(output: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG over a UNet output laid out ``[uncond; cond]`` along the batch."""
    uncond, cond = output.chunk(2)
    return uncond + guidance * (cond - uncond)


@dataclass
class DDIMStep:
    """One stochastic DDIM step: where it landed and the pieces it was built from."""

    x_prev: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    log_prob: torch.Tensor | None  # [B]; None when eta == 0 (a deterministic step)


def ddim_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_t: torch.Tensor,
    alpha_prev: torch.Tensor,
    eta: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> DDIMStep:
    """``x_prev = mu + sigma z`` with z drawn on the CPU from ``generator`` (device-independent
    streams, so runs reproduce across machines) unless ``noise`` is given."""
    alpha_t = alpha_t.reshape(-1).expand(x_t.shape[0]) if alpha_t.numel() == 1 else alpha_t
    alpha_prev = (
        alpha_prev.reshape(-1).expand(x_t.shape[0]) if alpha_prev.numel() == 1 else alpha_prev
    )
    sigma = ddim_sigma(alpha_t.float(), alpha_prev.float(), eta)
    mean = ddim_mean(x0, eps, alpha_prev.float(), sigma)
    if eta == 0:
        return DDIMStep(mean, x0, eps, None)
    if noise is None:
        noise = torch.randn(x_t.shape, generator=generator, dtype=torch.float32)
    x_prev = mean + sigma.reshape(-1, *([1] * (x_t.dim() - 1))).to(mean) * noise.to(mean)
    log_prob = ddim_step_log_prob(x_prev, x0, eps, alpha_t, alpha_prev, eta)
    return DDIMStep(x_prev, x0, eps, log_prob)


@dataclass
class Trajectory:
    """A sampled DDIM trajectory: ``latents[i]`` is the input of step i, ``latents[-1]`` the
    result; ``log_probs[:, i]`` the log-density of step i (None for eta = 0; NaN for a step
    without noise, the last one of a ``set_alpha_to_one`` scheduler, which has no density)."""

    latents: torch.Tensor  # [B, S+1, C, H, W]
    log_probs: torch.Tensor | None  # [B, S]
    timesteps: torch.Tensor  # [S]


def latent_shape(backbone: Backbone) -> tuple[int, int, int]:
    factor = 2 ** (len(backbone.vae.config.block_out_channels) - 1)
    size = backbone.resolution // factor
    return (backbone.unet.config.in_channels, size, size)


def guided_conditioning(
    backbone: Backbone, prompts: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Text conditioning and micro-conditioning laid out ``[uncond; cond]`` for one CFG call."""
    text = backbone.encode_guided(prompts)
    micro = default_micro_cond(2 * len(prompts), backbone.resolution, backbone.device)
    return text, micro


@torch.no_grad()
def sample_with_log_probs(
    backbone: Backbone,
    prompts: list[str],
    seeds: list[int],
    generator: torch.Generator,
    steps: int = 20,
    guidance: float = 5.0,
    eta: float = 1.0,
    reference: bool = False,
) -> Trajectory:
    """DDIM with CFG and ``eta``: the whole trajectory and every step's log-probability.
    The step noise comes from ``generator``; the initial latents from ``seeds``."""
    schedule = DDIMSchedule.for_backbone(backbone, steps)
    x = initial_noise(seeds, latent_shape(backbone)).to(backbone.device)
    text, micro = guided_conditioning(backbone, prompts)
    latents, log_probs = [x], []
    with backbone.sampling():
        for t, alpha_t, alpha_prev in zip(
            schedule.timesteps, schedule.alpha_t, schedule.alpha_prev
        ):
            out = backbone.predict(
                torch.cat([x, x]), t.repeat(2 * len(prompts)), text, micro, reference
            )
            x0, eps = split_prediction(
                backbone.prediction_type, guided_prediction(out, guidance), x, alpha_t
            )
            step = ddim_step(x, x0, eps, alpha_t, alpha_prev, eta, generator)
            x = step.x_prev
            latents.append(x)
            log_probs.append(step.log_prob)
    stacked = None if eta == 0 else torch.stack(log_probs, dim=1)
    return Trajectory(torch.stack(latents, dim=1), stacked, schedule.timesteps)
