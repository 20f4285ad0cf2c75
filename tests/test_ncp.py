import math

import pytest
import torch
from diffusers import DDPMScheduler

from alignkit.algorithms import build_algorithm
from alignkit.algorithms.ncp import NCPConfig, NCPSFTConfig, ddpm_posterior_sample
from alignkit.models.text import unet_conditioning
from tests.model_helpers import SyntheticPairs, tiny_backbone


def _inputs(backbone, rows=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 700][:rows])
    batch = SyntheticPairs(backbone, rows).batch(seed)
    return x, t, batch.text, batch.micro_cond


def _hooked_activations(backbone, x, t, text, micro_cond, reference):
    """The mid block's and last down block's outputs during a real UNet forward."""
    seen = {}
    hooks = [
        backbone.unet.mid_block.register_forward_hook(
            lambda m, i, out: seen.__setitem__("mid", out)
        ),
        backbone.unet.down_blocks[-1].register_forward_hook(
            lambda m, i, out: seen.__setitem__("down", out[0])
        ),
    ]
    try:
        backbone.predict(x, t, text, micro_cond, reference=reference)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _perturb_lora(backbone):
    with torch.no_grad():
        for name, param in backbone.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("layer", ["mid", "down"])
def test_encoder_features_are_the_reference_unets_block_outputs(family, layer):
    backbone = tiny_backbone(family)
    _perturb_lora(backbone)  # the policy now differs from the reference
    x, t, text, micro_cond = _inputs(backbone)
    features = backbone.encoder_features(x, t, text, micro_cond, layer)
    reference = _hooked_activations(backbone, x, t, text, micro_cond, reference=True)[layer]
    policy = _hooked_activations(backbone, x, t, text, micro_cond, reference=False)[layer]
    assert features.shape == reference.shape
    assert torch.allclose(features, reference, atol=1e-5)
    assert not torch.allclose(features, policy, atol=1e-3)
    if layer == "mid":
        width = backbone.unet.config.block_out_channels[-1]
        assert features.shape == (2, width, 4, 4)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_no_unet_weight_gets_a_gradient_from_the_encoder(finetune):
    backbone = tiny_backbone("sd", finetune=finetune)
    x, t, text, micro_cond = _inputs(backbone)
    x.requires_grad_(True)
    backbone.encoder_features(x, t, text, micro_cond, "mid").square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    unets = [backbone.unet] + ([backbone.reference_unet] if backbone.reference_unet else [])
    assert all(p.grad is None for unet in unets for p in unet.parameters())
    if finetune == "full":  # the policy UNet stays trainable; the encoder is the frozen copy
        assert all(p.requires_grad for p in backbone.unet.parameters())


def test_encoder_features_reject_an_unknown_layer():
    backbone = tiny_backbone("sd")
    x, t, text, micro_cond = _inputs(backbone)
    with pytest.raises(ValueError, match="'up'.*mid.*down"):
        backbone.encoder_features(x, t, text, micro_cond, "up")


@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_posterior_sample_matches_diffusers_ddpm_step(t):
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    generator = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8)
    step_generator = torch.Generator().manual_seed(7)
    expected = scheduler.step(eps, t, x_t, generator=step_generator).prev_sample
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
    a_t = scheduler.alphas_cumprod[t]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    ours = ddpm_posterior_sample(x0, x_t, torch.full((2,), t), scheduler.alphas_cumprod, z)
    assert torch.allclose(ours, expected, atol=1e-4)


def _algorithm(name, backbone, **settings):
    schema = NCPSFTConfig if name == "ncp_sft" else NCPConfig
    return build_algorithm(schema(name=name, **settings), backbone)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("timestep", ["t-1", "uniform"])
def test_ncp_sft_is_zero_when_the_policy_predicts_the_truth(prediction_type, timestep):
    backbone = tiny_backbone("sd", prediction_type=prediction_type)
    algorithm = _algorithm("ncp_sft", backbone, timestep=timestep)
    batch = SyntheticPairs(backbone, 3).batch(0)
    truth = {}
    real_add_noise = backbone.add_noise

    def add_noise(x0, noise, t):
        truth["target"] = backbone.target(x0, noise, t)
        return real_add_noise(x0, noise, t)

    backbone.add_noise = add_noise
    backbone.predict = lambda x_t, t, text, micro, reference=False: truth["target"]
    loss, _ = algorithm.loss(batch, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0.0, abs=1e-8)
    del backbone.predict
    real, _ = algorithm.loss(batch, torch.Generator().manual_seed(0))
    assert real.item() > 1e-6


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("name", ["ncp_dpo", "ncp_cpo", "ncp_sft"])
def test_ncp_losses_train_the_adapter_only_through_the_prediction(family, name):
    backbone = tiny_backbone(family)
    algorithm = _algorithm(name, backbone, layer="down" if family == "sdxl" else "mid")
    loss, metrics = algorithm.loss(SyntheticPairs(backbone, 2).batch(0), torch.Generator())
    if name == "ncp_dpo":  # LoRA starts as the identity: policy == reference
        assert loss.item() == pytest.approx(math.log(2), rel=1e-5)
        assert metrics["model_feat_w"] == pytest.approx(metrics["ref_feat_w"], rel=1e-5)
    loss.backward()
    grads = {n: p.grad for n, p in backbone.unet.named_parameters() if p.requires_grad}
    assert grads and all("lora" in n for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in backbone.unet.parameters() if not p.requires_grad)


def test_ncp_rejects_unknown_settings():
    backbone = tiny_backbone("sd")
    with pytest.raises(ValueError, match="algo.layer='up'"):
        _algorithm("ncp_dpo", backbone, layer="up")
    with pytest.raises(ValueError, match="algo.timestep='t-2'"):
        _algorithm("ncp_dpo", backbone, timestep="t-2")


def test_encoder_conditioning_matches_the_unet_call():
    """SDXL's added embeddings reach the encoder: other time ids, other features."""
    backbone = tiny_backbone("sdxl")
    x, t, text, micro_cond = _inputs(backbone)
    moved = micro_cond.clone()
    moved[:, 2:4] = 8.0
    assert unet_conditioning("sdxl", text, micro_cond, torch.float32)["added_cond_kwargs"]
    base = backbone.encoder_features(x, t, text, micro_cond, "down")
    assert not torch.allclose(base, backbone.encoder_features(x, t, text, moved, "down"))


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_encoder_gradients_are_the_same_with_gradient_checkpointing(finetune):
    """Recomputation in the backward pass must see the reference too (adapters still off)."""
    grads = []
    for checkpointing in (False, True):
        backbone = tiny_backbone("sd", finetune=finetune, gradient_checkpointing=checkpointing)
        _perturb_lora(backbone)
        x, t, text, micro_cond = _inputs(backbone)
        x.requires_grad_(True)
        backbone.encoder_features(x, t, text, micro_cond, "mid").square().mean().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_at_t_zero_every_compared_sample_is_x_t_as_in_the_authors_code():
    backbone = tiny_backbone("sd")
    algorithm = _algorithm("ncp_sft", backbone, timestep="t-1")
    generator = torch.Generator().manual_seed(0)
    x0, x_t = (
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.randn(2, 4, 8, 8, generator=generator),
    )
    outputs = [torch.randn(2, 4, 8, 8, generator=generator) for _ in range(2)]
    draws = algorithm.draw(2, (4, 8, 8), generator)
    draws.t = torch.tensor([0, 500])
    samples, encoded_at = algorithm.compared_samples(x0, x_t, draws, outputs)
    assert encoded_at.tolist() == [0, 499]
    for sample in samples:  # row 0 (t = 0) stays x_t; row 1 takes its posterior step
        torch.testing.assert_close(sample[0], x_t[0])
        assert not torch.allclose(sample[1], x_t[1])
    assert not torch.allclose(samples[0][1], samples[1][1])  # truth and policy part at t > 0
