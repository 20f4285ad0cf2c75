"""SPO: step-aware preference optimization (Liang et al. 2024, docs/algorithms.md, "SPO").

Online. A sampling round turns a batch of prompts into single-step preference pairs (the
pool sampler, judged by the step-aware preference model); training then walks through those
transitions in micro-batches of ``train_batch_size``, as the authors' loop does, and the next
round starts when they are used up. The transitions waiting for training are this
algorithm's only state: ``state_dict``/``load_state_dict`` hand them to the Trainer's
checkpoint, so a resumed run continues mid-round exactly where the interrupted one stopped.

The prompt batch the Trainer hands over while transitions are still waiting is not used
(prompt batches are addressed by index, so skipping one only changes which prompts a round
draws, never the reproducibility).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from alignkit.algorithms.registry import ALGORITHMS
from alignkit.config import AlgoConfig
from alignkit.data.prompts import PromptBatch
from alignkit.losses import spo_loss
from alignkit.models import Backbone
from alignkit.parts import Part
from alignkit.pool_sampler import PoolConfig, PoolSampler, StepScorer, Transitions, redistribute
from alignkit.sampling import ddim_step_log_prob, guided_prediction, split_prediction

TINY_RANDOM_SPM = "tiny_random"
#: ``spm_base=reward:<name>``: a registered reward stands in for the SPM (``reward_step_scorer``).
REWARD_SPM_PREFIX = "reward:"


@dataclass
class SPOConfig(PoolConfig, AlgoConfig):
    """The pool sampler's settings (``PoolConfig``) plus the objective's and the SPM's."""

    beta: float = 10.0
    eps: float = 0.1
    train_batch_size: int = 10
    train_cfg: bool = True
    spm_tower: str = "hf"
    spm_base: str | None = None
    spm_checkpoint: str | None = None
    spm_tokenizer: str | None = None
    reward_logit_scale: float = 10.0


def reward_step_scorer(name: str, logit_scale: float) -> StepScorer:
    """A reward on each step's predicted ``x0``, blind to ``t``, times ``logit_scale`` as
    logits (the pair threshold acts on their softmax). With the tiny world's judge
    (``oracle``) it is a step-wise preference model right by construction, which tells an
    SPM's errors from SPO's; with a pixel reward it checks that SPO moves what it is told to."""
    from alignkit.rewards import build_reward

    reward = build_reward(name)

    def score(images: torch.Tensor, prompts: list[str], timesteps: torch.Tensor) -> torch.Tensor:
        return logit_scale * reward(images, prompts)

    return score


def build_step_scorer(cfg: SPOConfig, device: torch.device) -> StepScorer:
    """The SPM, frozen, on the training device; ``spm_base=tiny_random`` is a random-init tiny
    one (smoke runs and tests: it ranks arbitrarily), ``spm_base=reward:<name>`` a registered
    reward blind to ``t`` (a diagnostic: no learned model)."""
    from alignkit.rewards.spm import load_spm, tiny_random_spm

    if cfg.spm_base is None:
        raise ValueError(
            "algo=spo needs a step-aware preference model and none is set: pass "
            "algo.spm_base=<PickScore_v1: hub id or folder> "
            "algo.spm_tokenizer=<its processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K> "
            "algo.spm_checkpoint=<the SPM weights file> (model=sd15 and model=sdxl set the "
            "authors' released ones), or algo.spm_base=tiny_random for a smoke run"
        )
    if cfg.spm_base.startswith(REWARD_SPM_PREFIX):
        return reward_step_scorer(cfg.spm_base[len(REWARD_SPM_PREFIX) :], cfg.reward_logit_scale)
    if cfg.spm_base == TINY_RANDOM_SPM:
        spm = tiny_random_spm()
    else:
        spm = load_spm(cfg.spm_base, cfg.spm_checkpoint, cfg.spm_tower, cfg.spm_tokenizer)
    return spm.eval().requires_grad_(False).to(device)


def spm_parts(cfg: SPOConfig) -> list[Part]:
    """The SPM's base CLIP, processor and step-aware weights, where they are external."""
    if not cfg.spm_base or cfg.spm_base == TINY_RANDOM_SPM:
        return []
    if cfg.spm_base.startswith(REWARD_SPM_PREFIX):
        return []
    parts = [Part("the SPM's base CLIP (PickScore_v1)", "algo.spm_base", cfg.spm_base, "model")]
    if cfg.spm_tower == "hf" and cfg.spm_tokenizer:
        parts.append(
            Part("the SPM's CLIP processor", "algo.spm_tokenizer", cfg.spm_tokenizer, "model")
        )
    if cfg.spm_checkpoint:
        what = "the step-aware preference model's weights"
        parts.append(Part(what, "algo.spm_checkpoint", cfg.spm_checkpoint, "file"))
    return parts


@ALGORITHMS.register("spo")
class StepAwarePreferenceOptimization:
    data_kind = "prompts"
    config_class = SPOConfig
    required_parts = staticmethod(spm_parts)

    def __init__(
        self, cfg: SPOConfig, backbone: Backbone, scorer: StepScorer | None = None
    ) -> None:
        if cfg.train_batch_size < 1:
            raise ValueError(f"algo.train_batch_size={cfg.train_batch_size} must be at least 1")
        self.cfg = cfg
        self.backbone = backbone
        pool = PoolConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PoolConfig)})
        pool.validate()
        if cfg.eta <= 0:
            raise ValueError(f"algo.eta={cfg.eta}: SPO's step log-probabilities need eta > 0")
        self.sampler = PoolSampler(
            backbone, scorer or build_step_scorer(cfg, backbone.device), pool
        )
        self.waiting: Transitions | None = None
        self.round_metrics: dict[str, float] = {}
        self._uncond: dict[str, torch.Tensor] | None = None

    # -- state across optimizer steps (see the module doc) -----------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The waiting transitions, by reference (they are never modified in place, so this
        is a cheap snapshot the Trainer may take every step)."""
        if self.waiting is None or len(self.waiting) == 0:
            return {}
        return self.waiting.tensors()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.waiting = Transitions.from_tensors(state).to(self.backbone.device) if state else None

    # -- a sampling round ----------------------------------------------------------------------
    def _sampling_round(self, prompts: list[str], generator: torch.Generator) -> None:
        from accelerate import PartialState

        round_ = self.sampler.sample(prompts, generator)
        self.waiting = redistribute(round_.transitions, PartialState(), generator)
        self.round_metrics = {
            "round_pairs": float(len(round_.transitions)),
            "round_keep_rate": len(round_.transitions)
            / max(1, len(prompts) * (self.cfg.steps - self.cfg.divert_start_step)),
            "spm_score_mean": round_.scores.mean().item(),
            "spm_score_std": round_.scores.std().item() if round_.scores.numel() > 1 else 0.0,
        }

    def _take(self) -> Transitions:
        n = self.cfg.train_batch_size
        taken, self.waiting = self.waiting.select(slice(0, n)), self.waiting.select(slice(n, None))
        return taken

    # -- the loss ------------------------------------------------------------------------------
    def _log_probs(self, x_t, x_prev, batch: Transitions, reference: bool) -> torch.Tensor:
        """``log p(x_prev | x_t, c)`` of the policy (with grad) or the reference (no grad),
        with the same CFG as the sampler when ``train_cfg`` (the authors' default)."""
        backbone = self.backbone
        if self.cfg.train_cfg:
            if self._uncond is None:
                self._uncond = backbone.unconditional_text(1)
            text = {k: torch.cat([self._uncond[k].expand_as(v), v]) for k, v in batch.text.items()}
            out = backbone.predict(
                torch.cat([x_t, x_t]),
                batch.timesteps.repeat(2),
                text,
                batch.micro_cond.repeat(2, 1),
                reference=reference,
            )
            out = guided_prediction(out, self.cfg.guidance)
        else:
            out = backbone.predict(x_t, batch.timesteps, batch.text, batch.micro_cond, reference)
        x0, eps = split_prediction(backbone.prediction_type, out, x_t, batch.alpha_t)
        return ddim_step_log_prob(x_prev, x0, eps, batch.alpha_t, batch.alpha_prev, self.cfg.eta)

    def loss(self, batch: PromptBatch, generator: torch.Generator):
        if self.waiting is None or len(self.waiting) == 0:
            self._sampling_round(batch.prompts, generator)
        if len(self.waiting) == 0:  # no pair passed the threshold on any process
            zero = torch.zeros((), device=self.backbone.device, requires_grad=True)
            return zero, {**self.round_metrics, "pairs": 0.0}
        pairs = self._take()
        both = Transitions.cat([pairs, pairs])  # winners then losers, one call each model
        x_t = torch.cat([pairs.x_t_w, pairs.x_t_l])
        x_prev = torch.cat([pairs.x_prev_w, pairs.x_prev_l])
        logp_w, logp_l = self._log_probs(x_t, x_prev, both, reference=False).chunk(2)
        with torch.no_grad():
            ref_w, ref_l = self._log_probs(x_t, x_prev, both, reference=True).chunk(2)
        loss = spo_loss(logp_w, logp_l, ref_w, ref_l, self.cfg.beta, self.cfg.eps)
        log_ratio_w = (logp_w.detach() - ref_w).float()
        log_ratio_l = (logp_l.detach() - ref_l).float()
        ratios = torch.cat([log_ratio_w, log_ratio_l]).exp()
        clipped = (ratios < 1 - self.cfg.eps) | (ratios > 1 + self.cfg.eps)
        metrics = {
            **self.round_metrics,
            "pairs": float(len(pairs)),
            "ratio_w": log_ratio_w.exp().mean().item(),
            "ratio_l": log_ratio_l.exp().mean().item(),
            "clip_frac": clipped.float().mean().item(),
        }
        return loss, metrics
