"""Pure functions of the DDPM forward process, computed in float32."""

from __future__ import annotations

import torch


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, torch.float32).reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``."""
    a = _broadcast(alphas_cumprod[t.cpu()], x0)
    return a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()


def velocity(
    x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``."""
    a = _broadcast(alphas_cumprod[t.cpu()], x0)
    return a.sqrt() * noise.float() - (1 - a).sqrt() * x0.float()


def regression_target(
    prediction_type: str,
    x0: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """What the UNet is trained to output: ``eps`` or ``v``."""
    if prediction_type == "epsilon":
        return noise.float()
    if prediction_type == "v_prediction":
        return velocity(x0, noise, alphas_cumprod, t)
    raise ValueError(
        f"unsupported prediction_type {prediction_type!r}; alignkit trains 'epsilon' and "
        "'v_prediction' models (set model.prediction_type)"
    )


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all non-batch dimensions, in float32: ``[B]``."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
