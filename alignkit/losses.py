"""The objectives as pure functions of per-sample tensors (docs/algorithms.md, "The loss
functions (alignkit.losses)").

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


def cpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, beta: float) -> torch.Tensor:
    """Contrastive preference optimisation (NCP-CPO): ``mean(-logsigmoid(-0.5 beta (w - l)))``.

    DPO without the reference: the policy's own errors on winner and loser. beta carries the
    0.5 as in ``dpo_logits`` (the NCP authors' code writes beta=2500 without it).
    """
    logits = -0.5 * beta * (model_w.float() - model_l.float())
    return -F.logsigmoid(logits).mean()


def rpo_weights(emb_w: torch.Tensor, emb_l: torch.Tensor, tau: float) -> torch.Tensor:
    """``W[i, j] = softmax_j(-(1 - cos(f_w[i], f_l[j])) / tau)``, each row summing to one."""
    if tau <= 0:
        raise ValueError(f"rpo tau={tau} must be positive (the paper's default is 0.5)")
    f_w = F.normalize(emb_w.float(), dim=-1)
    f_l = F.normalize(emb_l.float(), dim=-1)
    distance = 1 - f_w @ f_l.T
    return torch.softmax(-distance / tau, dim=1)


def rpo_loss(
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    emb_w: torch.Tensor,
    emb_l: torch.Tensor,
    beta: float,
    tau: float,
    placement: str = "outside",
) -> torch.Tensor:
    """Diffusion-RPO (Gu et al. 2024): DPO over every winner x loser pair of the batch.

    ``L[i, j] = -0.5 beta (d_w[i] - d_l[j])`` with ``d = model - ref``; pairs are weighted by
    the similarity of their (unnormalised ``[B, D]``) embeddings, see ``rpo_weights``.
    ``outside`` (the paper): ``mean_i sum_j W[i,j] * -logsigmoid(L[i,j])``;
    ``inside`` (the authors' LLM-RPO code): ``mean_i mean_j -logsigmoid(W[i,j] * L[i,j])``.
    """
    d_w = model_w.float() - ref_w.float()
    d_l = model_l.float() - ref_l.float()
    logits = -0.5 * beta * (d_w[:, None] - d_l[None, :])
    weights = rpo_weights(emb_w, emb_l, tau)
    if placement == "outside":
        return (weights * -F.logsigmoid(logits)).sum(dim=1).mean()
    if placement == "inside":
        return -F.logsigmoid(weights * logits).mean()
    raise ValueError(
        f"unknown rpo weight placement {placement!r}; choose 'outside' (paper) or 'inside'"
    )


def spo_log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor, eps: float) -> torch.Tensor:
    """``log clamp(exp(logp - ref_logp), 1 - eps, 1 + eps)``: the clipped step log-ratio.

    Clamping (not PPO's min) means the gradient is exactly zero once the ratio leaves
    ``[1 - eps, 1 + eps]``: the policy cannot drift far from the sampler in one round.
    """
    ratio = torch.exp(logp.float() - ref_logp.float())
    return torch.log(torch.clamp(ratio, 1 - eps, 1 + eps))


def spo_loss(
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ref_logp_w: torch.Tensor,
    ref_logp_l: torch.Tensor,
    beta: float,
    eps: float,
) -> torch.Tensor:
    """SPO (Liang et al. 2024; docs/algorithms.md, "SPO"):
    ``mean(-logsigmoid(beta (log r_w - log r_l)))`` on single DDIM steps, ``r`` the clipped
    policy/reference likelihood ratio."""
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps}: the ratio clip must lie in (0, 1); SPO uses 0.1")
    logits = beta * (
        spo_log_ratio(logp_w, ref_logp_w, eps) - spo_log_ratio(logp_l, ref_logp_l, eps)
    )
    return -F.logsigmoid(logits).mean()
