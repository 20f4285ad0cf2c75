"""Differentiable DDIM rollouts for reward backpropagation (docs/algorithms.md, "DRTune and
its peers").

One rollout implementation serves DRTune and its peers, so an ablation compares only what
differs between them: which steps run, which UNet calls carry gradients, and whether the
UNet's input is cut from the graph. A ``RolloutPlan`` states those choices; the ``*_plan``
functions draw each method's plan.

- DRTune: early stop at ``T - m``, K equally spaced training steps (random offset), every
  UNet input detached. The update ``x_{t-1} = a x_t + b eps(sg(x_t))`` keeps ``x_t``, so
  the reward still reaches early training steps through the linear skip path, while the
  stored activations are those of K checkpointed calls: memory grows with K, not with T.
- AlignProp / DRaFT-K: the last K steps with grad and the full Jacobian (inputs not cut).
- ReFL: one step with grad at a random late step, predicting ``x0_hat`` there.
- DRaFT-LV: the last step only, redone on ``n`` re-noisings of the finished sample.

Everything here runs eta = 0 DDIM (deterministic), the setting of all five papers' reward
backpropagation; the noise comes from the caller's generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from alignkit.models import Backbone
from alignkit.models.text import default_micro_cond
from alignkit.sampling import DDIMSchedule, ddim_mean, split_prediction

SCHEMES = ("drtune", "alignprop", "draft_k", "draft_lv", "refl")
ZERO_SIGMA = torch.zeros(())


@dataclass(frozen=True)
class RolloutPlan:
    """Which DDIM steps run, which UNet calls carry gradients, and how.

    ``stop`` DDIM updates run; when ``stop < steps`` one more UNet call (index ``stop``)
    predicts ``x0_hat`` and the rollout ends there (early stop); ``stop == steps`` is the
    full chain, whose final latent is the result. ``grad_steps`` are UNet call indices run
    with grad; ``detach_inputs`` cuts every UNet input from the graph (stop-gradient);
    ``renoise > 0`` is DRaFT-LV: the finished sample is re-noised that many times to the last
    timestep and the last step is redone with grad on each.
    """

    steps: int
    stop: int
    grad_steps: tuple[int, ...]
    detach_inputs: bool
    renoise: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.stop <= self.steps:
            raise ValueError(f"stop={self.stop} must lie in [0, steps={self.steps}]")
        bad = [i for i in self.grad_steps if not 0 <= i < self.calls]
        if bad:
            raise ValueError(
                f"grad steps {bad} fall outside the {self.calls} UNet calls this plan runs"
            )
        if self.renoise and (self.stop != self.steps or self.grad_steps):
            raise ValueError("renoise (DRaFT-LV) needs the full chain without grad steps")

    @property
    def calls(self) -> int:
        """UNet calls of the chain (DRaFT-LV's re-noised calls come on top)."""
        return self.steps if self.stop == self.steps else self.stop + 1


def _uniform(low: int, high: int, generator: torch.Generator) -> int:
    """An integer uniform on ``[low, high]`` drawn from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")


def drtune_plan(
    steps: int, train_steps: int, early_stop_fraction: float, generator: torch.Generator
) -> RolloutPlan:
    """Stop at ``T - m``, ``m ~ U{1..round(f T)}``; K equally spaced calls, random offset."""
    _check_positive("steps", steps)
    _check_positive("train_steps", train_steps)
    if not 0.0 <= early_stop_fraction < 1.0:
        raise ValueError(f"early_stop_fraction={early_stop_fraction} must lie in [0, 1)")
    most = round(early_stop_fraction * steps)
    stop = steps - _uniform(1, most, generator) if most >= 1 else steps
    calls = steps if stop == steps else stop + 1
    k = min(train_steps, calls)
    stride = calls // k
    offset = _uniform(0, stride - 1, generator)
    grad = tuple(offset + i * stride for i in range(k))
    return RolloutPlan(steps, stop, grad, detach_inputs=True)


def last_k_plan(steps: int, k: int) -> RolloutPlan:
    """DRaFT-K: the full chain, grad (with the full Jacobian) through the last K calls."""
    _check_positive("steps", steps)
    _check_positive("train_steps", k)
    k = min(k, steps)
    return RolloutPlan(steps, steps, tuple(range(steps - k, steps)), detach_inputs=False)


def alignprop_plan(
    steps: int, k_min: int, k_max: int | None, generator: torch.Generator
) -> RolloutPlan:
    """AlignProp's randomised truncation: last-K with ``K ~ U{k_min..k_max}`` per rollout."""
    k_max = steps if k_max is None else k_max
    if not 1 <= k_min <= k_max <= steps:
        raise ValueError(
            f"truncation range [{k_min}, {k_max}] must satisfy 1 <= min <= max <= steps={steps}"
        )
    return last_k_plan(steps, _uniform(k_min, k_max, generator))


def refl_plan(steps: int, window: int, generator: torch.Generator) -> RolloutPlan:
    """ReFL: no-grad steps up to ``s ~ U{T - window .. T - 1}``, one grad call predicting x0."""
    _check_positive("steps", steps)
    if not 1 <= window <= steps:
        raise ValueError(f"refl_window={window} must lie in [1, steps={steps}]")
    stop = _uniform(steps - window, steps - 1, generator)
    return RolloutPlan(steps, stop, (stop,), detach_inputs=True)


def draft_lv_plan(steps: int, samples: int) -> RolloutPlan:
    """DRaFT-LV: the chain without grad, then the last step redone on ``samples`` re-noisings."""
    _check_positive("steps", steps)
    _check_positive("lv_samples", samples)
    return RolloutPlan(steps, steps, (), detach_inputs=True, renoise=samples)


@dataclass
class Rollout:
    """The rollout's result: latents to decode (``x0_hat`` or the sample) and their prompts
    (repeated ``renoise`` times for DRaFT-LV)."""

    latents: torch.Tensor
    prompts: list[str]
    plan: RolloutPlan


@dataclass
class GuidedModel:
    """The policy's guided prediction at one timestep, as one function of ``x_t`` (what
    gradient checkpointing recomputes). ``text`` and ``micro`` hold [uncond; cond] halves
    when guided."""

    backbone: Backbone
    guidance: float
    text: dict[str, torch.Tensor]
    micro: torch.Tensor | None

    @classmethod
    def for_prompts(cls, backbone: Backbone, prompts: list[str], guidance: float) -> GuidedModel:
        guided = guidance != 1.0
        text = backbone.encode_guided(prompts) if guided else backbone.encode_prompts(prompts)
        rows = len(prompts) * (2 if guided else 1)
        micro = default_micro_cond(rows, backbone.resolution, backbone.device)
        return cls(backbone, guidance, text, micro)

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_input = torch.cat([x, x]) if self.guided else x
        timesteps = t.to(x.device).repeat(len(model_input))
        out = self.backbone.predict(model_input, timesteps, self.text, self.micro)
        if not self.guided:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def repeated(self, times: int) -> GuidedModel:
        """The same conditioning for ``times`` stacked copies of the batch."""
        tensors = dict(self.text)
        if self.micro is not None:
            tensors["micro"] = self.micro
        tensors = _repeat_halves(tensors, times, self.guided)
        micro = tensors.pop("micro", None)
        return GuidedModel(self.backbone, self.guidance, tensors, micro)


def _repeat_halves(
    tensors: dict[str, torch.Tensor], times: int, guided: bool
) -> dict[str, torch.Tensor]:
    """Repeat each half ([uncond; cond]) of a guided batch, keeping the halves apart."""
    out = {}
    for name, tensor in tensors.items():
        halves = tensor.chunk(2) if guided else (tensor,)
        out[name] = torch.cat([half.repeat(times, *([1] * (half.dim() - 1))) for half in halves])
    return out


def _run_call(
    model: GuidedModel, x: torch.Tensor, t: torch.Tensor, with_grad: bool, use_checkpoint: bool
) -> torch.Tensor:
    if not with_grad:
        with torch.no_grad():
            return model(x, t)
    if use_checkpoint:
        return checkpoint(model, x, t, use_reentrant=False)
    return model(x, t)


def rollout(
    backbone: Backbone,
    prompts: list[str],
    noise: torch.Tensor,
    plan: RolloutPlan,
    guidance: float,
    generator: torch.Generator | None = None,
    use_checkpoint: bool = True,
    on_call: Callable[[int, torch.Tensor], None] | None = None,
) -> Rollout:
    """Run ``plan`` from ``noise`` (``x_T``); return the latents the reward will see.

    ``generator`` draws DRaFT-LV's re-noising; ``on_call(index, model_output)`` lets tests
    watch each UNet call.
    """
    if len(noise) != len(prompts):
        raise ValueError(f"{len(noise)} noise latents but {len(prompts)} prompts")
    with backbone.sampling():
        return _run_plan(
            backbone, prompts, noise, plan, guidance, generator, use_checkpoint, on_call
        )


def _run_plan(
    backbone: Backbone,
    prompts: list[str],
    noise: torch.Tensor,
    plan: RolloutPlan,
    guidance: float,
    generator: torch.Generator | None,
    use_checkpoint: bool,
    on_call: Callable[[int, torch.Tensor], None] | None,
) -> Rollout:
    schedule = DDIMSchedule.for_backbone(backbone, plan.steps)
    model = GuidedModel.for_prompts(backbone, prompts, guidance)
    grad_steps = set(plan.grad_steps)
    x = noise.to(backbone.device, torch.float32)
    for index in range(plan.calls):
        t, alpha_t = schedule.timesteps[index], schedule.alpha_t[index]
        model_input = x.detach() if plan.detach_inputs else x
        out = _run_call(model, model_input, t, index in grad_steps, use_checkpoint)
        if on_call is not None:
            on_call(index, out)
        x0, eps = split_prediction(backbone.prediction_type, out, x, alpha_t.expand(len(x)))
        if index == plan.stop:
            return Rollout(x0, list(prompts), plan)
        x = ddim_mean(x0, eps, schedule.alpha_prev[index].expand(len(x)), ZERO_SIGMA)
    if not plan.renoise:
        return Rollout(x, list(prompts), plan)
    latents = _renoised_last_step(backbone, model, schedule, x.detach(), plan, generator, on_call)
    return Rollout(latents, [p for _ in range(plan.renoise) for p in prompts], plan)


def _renoised_last_step(
    backbone: Backbone,
    model: GuidedModel,
    schedule: DDIMSchedule,
    sample: torch.Tensor,
    plan: RolloutPlan,
    generator: torch.Generator | None,
    on_call: Callable[[int, torch.Tensor], None] | None,
) -> torch.Tensor:
    """DRaFT-LV: ``x_1^i = sqrt(a_1) sg(x_0) + sqrt(1 - a_1) eps_i``, one grad step each."""
    if generator is None:
        raise ValueError("DRaFT-LV re-noises the sample: pass a torch.Generator")
    times = plan.renoise
    t, alpha_t = schedule.timesteps[-1], schedule.alpha_t[-1]
    stacked = sample.repeat(times, 1, 1, 1)
    fresh = torch.randn(stacked.shape, generator=generator).to(stacked)
    x = alpha_t.sqrt() * stacked + (1 - alpha_t).sqrt() * fresh
    repeated = model.repeated(times)
    out = _run_call(repeated, x, t, with_grad=True, use_checkpoint=False)
    if on_call is not None:
        on_call(plan.calls, out)
    x0, eps = split_prediction(backbone.prediction_type, out, x, alpha_t.expand(len(x)))
    return ddim_mean(x0, eps, schedule.alpha_prev[-1].expand(len(x)), ZERO_SIGMA)
