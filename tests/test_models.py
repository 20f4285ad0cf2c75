import open_clip
import pytest
import torch
from diffusers import StableDiffusionPipeline

from alignkit.config import ModelConfig
from alignkit.models import ModelLoadError, build_backbone
from alignkit.models.schedule import add_noise, velocity
from alignkit.models.text import default_micro_cond
from alignkit.models.tokenizer import offline_clip_tokenizer
from alignkit.trainer import clip_gradients
from tests.model_helpers import PROMPTS, SyntheticPairs, tiny_backbone, tiny_trainer


def _inputs(backbone, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn((batch_size, 4, 8, 8), generator=generator)
    t = torch.tensor([10, 700])[:batch_size]
    return x_t, t, backbone.encode_prompts(PROMPTS[:batch_size]), default_micro_cond(batch_size, 32)


def test_offline_tokenizer_matches_open_clip_ids():
    prompt = "A photo of a Red triangle, on blue background; naïve café!"
    ids = offline_clip_tokenizer()(prompt, padding="max_length", max_length=77).input_ids
    reference = open_clip.tokenize([prompt])[0].tolist()
    length = reference.index(49407) + 1
    assert ids[:length] == reference[:length]
    assert set(ids[length:]) == {49407}  # SD pads with <|endoftext|>


def test_v_prediction_target_is_the_velocity():
    backbone = tiny_backbone(prediction_type="v_prediction")
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 499, 999])
    a = backbone.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(backbone.target(x0, noise, t), expected)
    torch.testing.assert_close(
        velocity(x0, noise, backbone.alphas_cumprod, t),
        backbone.scheduler.get_velocity(x0, noise, t),
    )
    assert backbone.scheduler.config.prediction_type == "v_prediction"


def test_epsilon_target_is_the_noise_and_noising_matches_diffusers():
    backbone = tiny_backbone()
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([3, 900])
    torch.testing.assert_close(backbone.target(x0, noise, t), noise)
    torch.testing.assert_close(
        add_noise(x0, noise, backbone.alphas_cumprod, t), backbone.scheduler.add_noise(x0, noise, t)
    )


def test_one_step_changes_only_lora_and_keeps_the_reference(tmp_path):
    backbone = tiny_backbone()
    x_t, t, text, micro = _inputs(backbone)
    before = {name: p.detach().clone() for name, p in backbone.unet.named_parameters()}
    reference_before = backbone.predict(x_t, t, text, micro, reference=True)
    policy_before = backbone.predict(x_t, t, text, micro).detach()
    torch.testing.assert_close(policy_before, reference_before)  # LoRA B starts at zero

    tiny_trainer(backbone, tmp_path).train_step()

    changed = {n for n, p in backbone.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in name for name in changed)
    torch.testing.assert_close(
        backbone.predict(x_t, t, text, micro, reference=True), reference_before
    )
    assert not torch.allclose(backbone.predict(x_t, t, text, micro).detach(), policy_before)


def test_lora_reference_is_not_a_second_unet():
    backbone = tiny_backbone()
    assert backbone.reference_unet is None
    trainable = sum(p.numel() for p in backbone.trainable_parameters())
    total = sum(p.numel() for p in backbone.unet.parameters())
    assert 0 < trainable < total / 10


def test_full_finetuning_keeps_a_frozen_reference_copy_on_cpu(tmp_path):
    backbone = tiny_backbone(finetune="full", reference_device="cpu")
    x_t, t, text, micro = _inputs(backbone)
    reference_before = backbone.predict(x_t, t, text, micro, reference=True)
    tiny_trainer(backbone, tmp_path).train_step()
    assert all(not p.requires_grad for p in backbone.reference_unet.parameters())
    torch.testing.assert_close(
        backbone.predict(x_t, t, text, micro, reference=True), reference_before
    )
    assert not torch.allclose(backbone.predict(x_t, t, text, micro).detach(), reference_before)


def test_sdxl_conditions_on_pooled_text_and_time_ids(tmp_path):
    backbone = tiny_backbone("sdxl")
    x_t, t, text, micro = _inputs(backbone)
    assert text["prompt_embeds"].shape == (2, 77, 64)  # both encoders' penultimate states
    assert text["pooled_prompt_embeds"].shape == (2, 32)
    base = backbone.predict(x_t, t, text, micro)
    cropped = micro.clone()
    cropped[:, 2:4] = 16.0  # another crop_top_left
    assert not torch.allclose(base, backbone.predict(x_t, t, text, cropped))
    metrics = tiny_trainer(backbone, tmp_path).train_step()
    assert metrics["loss"] == pytest.approx(0.6931, abs=1e-3)


def test_clipping_bounds_the_trainable_gradient_norm(tmp_path):
    backbone = tiny_backbone()
    trainer = tiny_trainer(backbone, tmp_path, max_grad_norm=1e-4)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in backbone.trainable_parameters()}
    for p in trainer.params:
        p.grad = torch.ones_like(p)
    before = clip_gradients(trainer.params, 1e-4)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.params]))
    assert before > 1.0
    assert after.item() == pytest.approx(1e-4, rel=1e-3)


def test_saved_lora_loads_with_diffusers_pipeline(tmp_path):
    backbone = tiny_backbone()
    trainer = tiny_trainer(backbone, tmp_path / "run")
    for _ in range(2):
        trainer.train_step()
    path = backbone.save_final(tmp_path / "final")
    assert path.name == "pytorch_lora_weights.safetensors"
    x_t, t, text, _ = _inputs(backbone)
    expected = backbone.predict(x_t, t, text).detach()

    fresh = tiny_backbone(finetune="full")  # same seed -> same base weights, no adapter
    pipeline = StableDiffusionPipeline(
        unet=fresh.unet,
        vae=fresh.vae,
        text_encoder=fresh.text_encoders[0],
        tokenizer=fresh.tokenizers[0],
        scheduler=fresh.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.load_lora_weights(str(tmp_path / "final"))
    with torch.no_grad():
        loaded = pipeline.unet(x_t, t, text["prompt_embeds"]).sample
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-4)


def test_missing_local_model_path_is_a_clear_error(tmp_path):
    cfg = ModelConfig(name="sd15", path=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="no such folder"):
        build_backbone(cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        build_backbone(ModelConfig(name="sd15", path=str(tmp_path / "empty")))


def test_a_missing_tiny_world_model_says_how_to_build_it(tmp_path, monkeypatch):
    missing = str(tmp_path / "assets" / "base_model")
    monkeypatch.setattr("alignkit.models.loading.asset_path", lambda name: missing)
    with pytest.raises(ModelLoadError, match="experiments/tiny_world/build.py"):
        build_backbone(ModelConfig(name="tiny", path=missing))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):
        build_backbone(ModelConfig(name="sd15", path="nobody-here/no-such-model"))


def test_synthetic_pairs_are_deterministic():
    source = SyntheticPairs(tiny_backbone())
    torch.testing.assert_close(source.batch(3).latents_w, source.batch(3).latents_w)


def test_sampled_latents_are_diffusers_posterior_samples_one_generator_per_image():
    backbone = tiny_backbone("sd")
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = backbone.encode_images(pixels, [torch.Generator().manual_seed(s) for s in (1, 2)])
    scale = backbone.vae.config.scaling_factor
    for row, seed in enumerate((1, 2)):
        posterior = backbone.vae.encode(pixels[row : row + 1]).latent_dist
        theirs = posterior.sample(generator=torch.Generator().manual_seed(seed)) * scale
        torch.testing.assert_close(ours[row : row + 1], theirs)
    mode = backbone.encode_images(pixels)
    assert not torch.allclose(ours, mode)
