"""Per-sample denoising errors of the policy and the reference, shared by the offline algorithms."""

from __future__ import annotations

import torch

from alignkit.models import Backbone
from alignkit.models.schedule import per_sample_mse


def noise_and_timesteps(
    backbone: Backbone, like: torch.Tensor, generator: torch.Generator, one_timestep: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A timestep per row of ``like`` (or one for all rows) and a noise tensor per row, drawn
    from ``generator`` in that order."""
    rows = like.shape[0]
    t = backbone.sample_timesteps(1 if one_timestep else rows, generator).expand(rows)
    noise = torch.randn(like.shape, generator=generator, dtype=torch.float32)
    return t, noise


def denoising_errors(
    backbone: Backbone,
    latents: torch.Tensor,
    text: dict[str, torch.Tensor],
    micro_cond: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    with_reference: bool = True,
    with_policy: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``MSE(model(x_t) - target)`` per sample for the policy (with grad) and the reference;
    a side left out (``with_policy`` / ``with_reference`` false) is ``None``."""
    device = backbone.device
    latents, noise, t = latents.to(device), noise.to(device), t.to(device)
    x_t = backbone.add_noise(latents, noise, t)
    target = backbone.target(latents, noise, t)
    model_err = ref_err = None
    if with_policy:
        model_err = per_sample_mse(backbone.predict(x_t, t, text, micro_cond), target)
    if with_reference:
        ref_pred = backbone.predict(x_t, t, text, micro_cond, reference=True)
        ref_err = per_sample_mse(ref_pred, target)
    return model_err, ref_err


def paired(tensor: torch.Tensor) -> torch.Tensor:
    """Stack a per-pair tensor twice (winner half, loser half) along the batch."""
    return torch.cat([tensor, tensor], dim=0)


def pair_errors(
    backbone: Backbone,
    batch,
    t: torch.Tensor,
    noise: torch.Tensor,
    with_reference: bool = True,
    with_policy: bool = True,
) -> tuple[torch.Tensor | None, ...]:
    """Policy and reference errors of winners and losers ``(model_w, model_l, ref_w, ref_l)``,
    each winner and its loser noised alike (one ``t`` and ``noise`` row per pair); the halves
    of a side left out are ``None``."""
    model_err, ref_err = denoising_errors(
        backbone,
        torch.cat([batch.latents_w, batch.latents_l]),
        {k: paired(v) for k, v in batch.text.items()},
        paired(batch.micro_cond),
        paired(t),
        paired(noise),
        with_reference=with_reference,
        with_policy=with_policy,
    )
    model_w, model_l = model_err.chunk(2) if model_err is not None else (None, None)
    ref_w, ref_l = ref_err.chunk(2) if ref_err is not None else (None, None)
    return model_w, model_l, ref_w, ref_l
