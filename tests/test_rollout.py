"""The reward-backpropagation rollout: plans, where gradients go, equality with plain backprop."""

from __future__ import annotations

import pytest
import torch

from alignkit.models.text import default_micro_cond
from alignkit.rollout import (
    RolloutPlan,
    alignprop_plan,
    draft_lv_plan,
    drtune_plan,
    last_k_plan,
    refl_plan,
    rollout,
)
from alignkit.sampling import DDIMSchedule, ddim_mean, split_prediction
from tests.model_helpers import PROMPTS, tiny_backbone

GUIDANCE = 3.0


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model = tiny_backbone("sd")
    for name, param in model.unet.named_parameters():
        if "lora_B" in name:  # LoRA starts at zero: give it weight so gradients are generic
            torch.nn.init.normal_(param, std=0.05)
    return model


def _noise(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def _reward(backbone, latents: torch.Tensor) -> torch.Tensor:
    """A fixed linear function of the decoded pixels: gradients reach every pixel."""
    images = backbone.decode_latents_with_grad(latents)
    weights = torch.linspace(-1, 1, images[0].numel()).view(images[0].shape)
    return (images * weights).flatten(1).sum(1)


class CallWatcher:
    """Records, per UNet call of the forward pass, whether its input carries a graph and
    whether a gradient later reaches its output."""

    def __init__(self, backbone) -> None:
        self.inputs_with_grad: list[int] = []
        self.reached: set[int] = set()
        self.calls = 0
        self.forward_done = False
        self.original = backbone.unet_forward

        def watched(sample, *args, **kwargs):
            if not self.forward_done and sample.requires_grad:
                self.inputs_with_grad.append(self.calls)
            return self.original(sample, *args, **kwargs)

        backbone.unet_forward = watched

    def on_call(self, index: int, output: torch.Tensor) -> None:
        self.calls = index + 1
        if output.requires_grad:
            output.register_hook(lambda grad, i=index: self.reached.add(i))

    def restore(self, backbone) -> None:
        backbone.unet_forward = self.original


def _run(backbone, plan, noise=None, **kwargs):
    watcher = CallWatcher(backbone)
    backbone.unet.zero_grad(set_to_none=True)
    try:
        noise = _noise() if noise is None else noise
        prompts = PROMPTS[: len(noise)]
        on_call = watcher.on_call
        result = rollout(backbone, prompts, noise, plan, GUIDANCE, on_call=on_call, **kwargs)
        watcher.forward_done = True
        _reward(backbone, result.latents).sum().backward()
    finally:
        watcher.restore(backbone)
    return result, watcher


def _grads(backbone) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.clone()
        for name, p in backbone.unet.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def test_drtune_plan_stops_early_and_spaces_training_steps_evenly():
    stops = set()
    for seed in range(40):
        plan = drtune_plan(10, 3, 0.4, torch.Generator().manual_seed(seed))
        stops.add(plan.stop)
        calls = plan.stop + 1
        stride = calls // 3
        assert plan.detach_inputs and plan.calls == calls
        assert len(plan.grad_steps) == 3
        assert {b - a for a, b in zip(plan.grad_steps, plan.grad_steps[1:])} == {stride}
        assert 0 <= plan.grad_steps[0] < stride
    assert stops == {6, 7, 8, 9}  # m ~ U{1..round(0.4 * 10)}


def test_drtune_plan_without_early_stop_and_with_more_steps_than_calls():
    plan = drtune_plan(4, 10, 0.0, torch.Generator().manual_seed(0))
    assert plan.stop == 4 and plan.grad_steps == (0, 1, 2, 3)


def test_peer_plans():
    generator = torch.Generator().manual_seed(0)
    assert last_k_plan(6, 2) == RolloutPlan(6, 6, (4, 5), detach_inputs=False)
    ks = {len(alignprop_plan(6, 2, 4, generator).grad_steps) for _ in range(40)}
    assert ks == {2, 3, 4}
    refl = [refl_plan(40, 10, generator) for _ in range(60)]
    assert {p.stop for p in refl} == set(range(30, 40))
    assert all(p.grad_steps == (p.stop,) for p in refl)
    assert draft_lv_plan(5, 2).renoise == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: drtune_plan(10, 0, 0.4, torch.Generator()), "train_steps=0"),
        (lambda: drtune_plan(10, 3, 1.0, torch.Generator()), "early_stop_fraction=1.0"),
        (lambda: alignprop_plan(6, 3, 9, torch.Generator()), r"\[3, 9\]"),
        (lambda: refl_plan(6, 7, torch.Generator()), "refl_window=7"),
        (lambda: RolloutPlan(5, 3, (4,), True), r"grad steps \[4\]"),
    ],
)
def test_bad_plans_are_rejected_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_drtune_gradients_reach_only_the_training_calls_and_never_an_input(backbone):
    plan = RolloutPlan(steps=6, stop=4, grad_steps=(0, 2, 4), detach_inputs=True)
    result, watcher = _run(backbone, plan)
    assert watcher.calls == 5  # 4 updates, then the call that predicts x0_hat
    assert watcher.reached == {0, 2, 4}
    assert watcher.inputs_with_grad == []
    grads = _grads(backbone)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0
    assert result.latents.shape == (2, 4, 8, 8)


def test_last_k_carries_the_full_jacobian_through_the_unet_inputs(backbone):
    _, watcher = _run(backbone, last_k_plan(5, 3))
    assert watcher.reached == {2, 3, 4}
    assert watcher.inputs_with_grad == [3, 4]  # the first grad call's input comes from no-grad


def test_a_non_training_call_gets_no_gradient_even_late(backbone):
    plan = RolloutPlan(steps=5, stop=5, grad_steps=(1,), detach_inputs=True)
    _, watcher = _run(backbone, plan)
    assert watcher.reached == {1}
    assert _grads(backbone)


def _plain_backprop_chain(backbone, noise, steps):
    """Every step with grad, nothing detached, no checkpointing: textbook backprop."""
    schedule = DDIMSchedule.for_backbone(backbone, steps)
    prompts = PROMPTS[: len(noise)]
    text = backbone.encode_prompts([""] * len(noise) + prompts)
    micro = default_micro_cond(2 * len(noise), backbone.resolution)
    x = noise
    for t, alpha_t, alpha_prev in zip(schedule.timesteps, schedule.alpha_t, schedule.alpha_prev):
        out = backbone.predict(torch.cat([x, x]), t.repeat(2 * len(x)), text, micro)
        uncond, cond = out.chunk(2)
        guided = uncond + GUIDANCE * (cond - uncond)
        x0, eps = split_prediction(backbone.prediction_type, guided, x, alpha_t.expand(len(x)))
        x = ddim_mean(x0, eps, alpha_prev.expand(len(x)), torch.zeros(()))
    return x


def test_k_equal_t_without_stop_gradient_equals_plain_backprop(backbone):
    steps, noise = 3, _noise()
    backbone.unet.zero_grad(set_to_none=True)
    plain = _plain_backprop_chain(backbone, noise, steps)
    _reward(backbone, plain).sum().backward()
    expected = _grads(backbone)
    plan = RolloutPlan(steps, steps, tuple(range(steps)), detach_inputs=False)
    result, watcher = _run(backbone, plan, noise=noise)
    got = _grads(backbone)
    torch.testing.assert_close(result.latents, plain.detach(), rtol=1e-5, atol=1e-6)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7)
    assert watcher.inputs_with_grad == [1, 2]


def test_stop_gradient_changes_the_gradient(backbone):
    """The stop-gradient is real: with it the same calls give another parameter gradient."""
    full = RolloutPlan(3, 3, (0, 1, 2), detach_inputs=False)
    cut = RolloutPlan(3, 3, (0, 1, 2), detach_inputs=True)
    _run(backbone, full)
    with_jacobian = _grads(backbone)
    _run(backbone, cut)
    without = _grads(backbone)
    assert any(not torch.allclose(with_jacobian[n], without[n]) for n in with_jacobian)


def test_draft_lv_renoises_the_sample_and_repeats_the_prompts(backbone):
    plan = draft_lv_plan(3, samples=2)
    result, watcher = _run(backbone, plan, generator=torch.Generator().manual_seed(1))
    assert result.latents.shape == (4, 4, 8, 8)
    assert result.prompts == PROMPTS[:2] * 2
    assert watcher.reached == {3}  # only the re-noised last step, after the 3 chain calls
    with pytest.raises(ValueError, match="Generator"):
        rollout(backbone, PROMPTS[:2], _noise(), plan, GUIDANCE)


def test_mismatched_noise_and_prompts_are_rejected(backbone):
    with pytest.raises(ValueError, match="3 noise latents but 2 prompts"):
        rollout(backbone, PROMPTS[:2], _noise(3), last_k_plan(2, 1), GUIDANCE)


def test_memory_kept_for_backward_grows_with_k_not_t(backbone):
    from alignkit.bench_drtune import SavedBytes

    def saved(plan, use_checkpoint=True):
        counter = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda tensor: tensor):
            result = rollout(
                backbone, PROMPTS[:2], _noise(), plan, GUIDANCE, use_checkpoint=use_checkpoint
            )
            _reward(backbone, result.latents)
        return counter.total

    short = RolloutPlan(4, 4, (0, 2), detach_inputs=True)
    long = RolloutPlan(12, 12, (0, 6), detach_inputs=True)
    # only the per-step DDIM coefficients ([B] alphas, a few bytes each) scale with T
    assert 0 <= saved(long) - saved(short) < 1024
    assert 0 <= saved(long, False) - saved(short, False) < 1024
    more_k = RolloutPlan(12, 12, (0, 3, 6, 9), detach_inputs=True)
    assert saved(more_k, False) > saved(long, False)
    full_short = RolloutPlan(4, 4, (0, 1, 2, 3), detach_inputs=False)
    full_long = RolloutPlan(12, 12, tuple(range(12)), detach_inputs=False)
    assert saved(full_long, False) > 2 * saved(full_short, False)
