"""The objectives as pure functions of per-sample tensors (ALGORITHMS.md; DESIGN.md contract).

Inputs are ``[B]`` tensors; every function reduces by the mean over the batch and computes
in float32. No models, no I/O: these are what the hand-computed tests pin down.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_logits(
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``-0.5 * beta * ((model_w - ref_w) - (model_l - ref_l))`` per pair.

    beta carries the 0.5 as in the official Diffusion-DPO code, so beta=5000 here equals the
    diffusers port's beta=2500 without the 0.5.
    """
    d_w = model_w.float() - ref_w.float()
    d_l = model_l.float() - ref_l.float()
    return -0.5 * beta * (d_w - d_l)


def diffusion_dpo_loss(
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al. 2023): ``mean(-logsigmoid(dpo_logits))``.

    Works on any per-sample errors: epsilon-MSE (Diffusion-DPO) or feature-MSE (NCP-DPO).
    """
    return -F.logsigmoid(dpo_logits(model_w, model_l, ref_w, ref_l, beta)).mean()


def implicit_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """The share of pairs the implicit reward ranks correctly; ties count one half."""
    return ((logits > 0).float() + 0.5 * (logits == 0).float()).mean()
