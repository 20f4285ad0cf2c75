"""NCP: DPO, CPO and SFT in the U-Net embedding space (Gambashidze et al. 2024; docs/algorithms.md,
"NCP (DPO, CPO, SFT in the U-Net's embedding space)").

The error of a prediction is not its epsilon-MSE but the distance, in the frozen base UNet's
encoder features, between the step it takes and the step the true noise takes: from the same
``x_t`` and one shared posterior noise ``z`` the policy, the reference and the truth each land
on an ``x_{t-1}``, and ``F(.) = MSE(E(., t-1, c) - E(x, t-1, c))``. Gradients flow from ``F``
through the policy's ``x_{t-1}`` into its prediction, never into the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.algorithms.errors import paired
from alignkit.algorithms.registry import ALGORITHMS
from alignkit.config import AlgoConfig
from alignkit.data.batch import PairBatch
from alignkit.losses import cpo_loss, diffusion_dpo_loss, dpo_logits, implicit_accuracy
from alignkit.models import Backbone
from alignkit.models.encoder import ENCODER_LAYERS
from alignkit.models.schedule import per_sample_mse
from alignkit.sampling import split_prediction

TIMESTEP_MODES = ("t-1", "uniform")


@dataclass
class NCPSFTConfig(AlgoConfig):
    layer: str = "mid"  # mid | down: the encoder output compared (see conf/algo/ncp_*.yaml)
    timestep: str = "t-1"  # t-1 | uniform: where the compared samples live


@dataclass
class NCPConfig(NCPSFTConfig):
    beta: float = 5000.0


def _check(cfg: NCPSFTConfig) -> None:
    if cfg.layer not in ENCODER_LAYERS:
        raise ValueError(f"algo.layer={cfg.layer!r} is not an NCP encoder layer; use mid or down")
    if cfg.timestep not in TIMESTEP_MODES:
        raise ValueError(f"algo.timestep={cfg.timestep!r} is unknown; use 't-1' or 'uniform'")


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, torch.float32).reshape(-1, *([1] * (like.dim() - 1)))


def ddpm_posterior_sample(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    z: torch.Tensor,
) -> torch.Tensor:
    """``x_{t-1} ~ q(x_{t-1} | x_t, x0)`` with noise ``z`` (DDPM eq. 7, "fixed_small" variance).

    At ``t = 0`` the previous alpha is 1 (diffusers' convention), so the step lands on ``x0``.
    """
    t = t.cpu()
    a_t = alphas_cumprod[t]
    a_prev = torch.where(t > 0, alphas_cumprod[(t - 1).clamp(min=0)], torch.ones_like(a_t))
    beta_t = 1 - a_t / a_prev
    coef_x0 = _column(a_prev.sqrt() * beta_t / (1 - a_t), x0)
    coef_xt = _column((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t), x0)
    std = _column(((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=0).sqrt(), x0)
    return coef_x0 * x0.float() + coef_xt * x_t.float() + std * z.float()


@dataclass
class NCPErrors:
    """Per-sample feature errors ``[B]``; ``reference`` is None when not asked for."""

    model: torch.Tensor
    reference: torch.Tensor | None


@dataclass
class NCPDraws:
    """The random draws of one batch: t, eps, and the posterior noise z or the timestep s."""

    t: torch.Tensor
    noise: torch.Tensor
    z: torch.Tensor | None = None
    s: torch.Tensor | None = None

    def paired(self) -> NCPDraws:
        """The same draws for the loser half: winner and loser share everything."""
        twice = [None if v is None else paired(v) for v in (self.t, self.noise, self.z, self.s)]
        return NCPDraws(*twice)


def _renoise(clean: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    a = _column(alpha, clean)
    return a.sqrt() * clean + (1 - a).sqrt() * eps


class NoiseConditionedPerception:
    """Shared machinery of the three NCP objectives: draws, the compared samples, features."""

    data_kind = "pairs"
    config_class = NCPConfig

    def __init__(self, cfg: NCPSFTConfig, backbone: Backbone) -> None:
        _check(cfg)
        self.cfg = cfg
        self.backbone = backbone

    def draw(self, rows: int, shape: tuple[int, ...], generator: torch.Generator) -> NCPDraws:
        t = self.backbone.sample_timesteps(rows, generator)
        noise = torch.randn((rows, *shape), generator=generator)
        if self.cfg.timestep == "t-1":
            return NCPDraws(t, noise, z=torch.randn((rows, *shape), generator=generator))
        return NCPDraws(t, noise, s=self.backbone.sample_timesteps(rows, generator))

    def compared_samples(
        self, x0: torch.Tensor, x_t: torch.Tensor, draws: NCPDraws, outputs: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The truth's sample, then one per UNet output, and the encoder's timestep.

        ``t-1``: DDPM posterior steps from ``x_t`` with one shared noise ``z``, encoded at
        ``max(t-1, 0)`` (the authors' default); at ``t = 0`` every sample is ``x_t`` itself.
        ``uniform``: each x0 prediction re-noised with its own eps prediction at a fresh
        timestep ``s`` (the authors' ``--timestep uniform``).
        """
        alphas, t = self.backbone.alphas_cumprod, draws.t
        a_t = alphas[t.cpu()]
        kind = self.backbone.prediction_type
        predictions = [split_prediction(kind, output, x_t, a_t) for output in outputs]
        if self.cfg.timestep == "t-1":
            z = draws.z.to(x0.device)
            cleans = [x0] + [x0_hat for x0_hat, _ in predictions]
            samples = [ddpm_posterior_sample(clean, x_t, t, alphas, z) for clean in cleans]
            # At t = 0 the authors' code leaves x_{t-1} = x_t for all three: F = 0 there and
            # the row adds no gradient (the posterior step would land on x0 and compare x0s).
            at_zero = _column((t == 0).float(), x_t).bool()
            samples = [torch.where(at_zero, x_t.float(), sample) for sample in samples]
            return samples, (t - 1).clamp(min=0)
        a_s = alphas[draws.s.cpu()]
        samples = [_renoise(x0, draws.noise.to(x0.device), a_s)]
        samples += [_renoise(x0_hat, eps_hat, a_s) for x0_hat, eps_hat in predictions]
        return samples, draws.s

    def feature_errors(
        self, latents: torch.Tensor, text, micro_cond, draws: NCPDraws, reference: bool
    ) -> NCPErrors:
        """``F`` of the policy (with grad) and, if asked, of the reference, per sample."""
        backbone, layer = self.backbone, self.cfg.layer
        x0 = latents.to(backbone.device).float()
        x_t = backbone.add_noise(x0, draws.noise.to(backbone.device), draws.t)
        outputs = [backbone.predict(x_t, draws.t, text, micro_cond)]
        if reference:
            outputs.append(backbone.predict(x_t, draws.t, text, micro_cond, reference=True))
        samples, s = self.compared_samples(x0, x_t, draws, outputs)
        with torch.no_grad():
            target = backbone.encoder_features(samples[0], s, text, micro_cond, layer)
            ref_err = None
            if reference:
                ref_features = backbone.encoder_features(samples[2], s, text, micro_cond, layer)
                ref_err = per_sample_mse(ref_features, target)
        model_features = backbone.encoder_features(samples[1], s, text, micro_cond, layer)
        return NCPErrors(per_sample_mse(model_features, target), ref_err)

    def pair_errors(
        self, batch: PairBatch, generator: torch.Generator, reference: bool
    ) -> NCPErrors:
        """Winners then losers; every draw is made per pair and shared by its two images."""
        draws = self.draw(len(batch), tuple(batch.latents_w.shape[1:]), generator)
        return self.feature_errors(
            torch.cat([batch.latents_w, batch.latents_l]),
            {k: paired(v) for k, v in batch.text.items()},
            paired(batch.micro_cond),
            draws.paired(),
            reference,
        )


@ALGORITHMS.register("ncp_dpo")
class NCPDPO(NoiseConditionedPerception):
    """Diffusion-DPO with the feature error ``F`` in place of the epsilon-MSE."""

    def loss(self, batch: PairBatch, generator: torch.Generator):
        errors = self.pair_errors(batch, generator, reference=True)
        model_w, model_l = errors.model.chunk(2)
        ref_w, ref_l = errors.reference.chunk(2)
        loss = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, self.cfg.beta)
        logits = dpo_logits(model_w.detach(), model_l.detach(), ref_w, ref_l, self.cfg.beta)
        return loss, {
            "implicit_acc": implicit_accuracy(logits).item(),
            "model_feat_w": model_w.mean().item(),
            "model_feat_l": model_l.mean().item(),
            "ref_feat_w": ref_w.mean().item(),
            "ref_feat_l": ref_l.mean().item(),
        }


@ALGORITHMS.register("ncp_cpo")
class NCPCPO(NoiseConditionedPerception):
    """``-logsigmoid(-0.5 beta (F(w) - F(l)))``: no reference model."""

    def loss(self, batch: PairBatch, generator: torch.Generator):
        errors = self.pair_errors(batch, generator, reference=False)
        model_w, model_l = errors.model.chunk(2)
        loss = cpo_loss(model_w, model_l, self.cfg.beta)
        return loss, {
            "implicit_acc": (model_w < model_l).float().mean().item(),
            "model_feat_w": model_w.mean().item(),
            "model_feat_l": model_l.mean().item(),
        }


@ALGORITHMS.register("ncp_sft")
class NCPSFT(NoiseConditionedPerception):
    """``F(w)`` on the winners only: supervised fine-tuning in feature space."""

    config_class = NCPSFTConfig

    def loss(self, batch: PairBatch, generator: torch.Generator):
        draws = self.draw(len(batch), tuple(batch.latents_w.shape[1:]), generator)
        errors = self.feature_errors(
            batch.latents_w, batch.text, batch.micro_cond, draws, reference=False
        )
        loss = errors.model.mean()
        return loss, {"model_feat_w": loss.item()}
