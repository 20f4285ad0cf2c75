"""The step-aware preference model: equal to its base CLIP at init, conditioned on t once
trained, and loading the authors' checkpoint layout on top of an HF CLIP."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from alignkit.rewards.clip import ClipModel
from alignkit.rewards.spm import (
    TINY_CLIP_CONFIG,
    StepAwarePreferenceModel,
    load_spm,
    read_state_dict,
    timestep_embedding,
)
from alignkit.tinyworld.assets import asset_path

PROMPTS = ["a red circle", "a blue square", "a green star"]


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 40, 48, generator=torch.Generator().manual_seed(0))


def _perturb_adapter(spm: StepAwarePreferenceModel) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, value in spm.named_parameters():
            if "adaLN_modulation" in name:
                value.add_(0.1 * torch.randn(value.shape, generator=generator))


class _FakeTokenizer:
    """Stands in for CLIPTokenizer (no vocabulary files offline): a fixed hash of the words."""

    def __call__(self, prompts, **_kwargs):
        rows = []
        for prompt in prompts:
            ids = [1] + [sum(map(ord, w)) % 90 + 5 for w in prompt.split()] + [99]
            rows.append(ids + [0] * (16 - len(ids)))
        return type("Tokens", (), {"input_ids": torch.tensor(rows)})()


def _tiny_hf_clip() -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=100, max_position_embeddings=16, eos_token_id=99, bos_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        projection_dim=16,
    )  # fmt: skip
    return CLIPModel(config).eval()


def test_timestep_embedding_is_cosines_then_sines():
    # dim 4: frequencies 1 and 1e4 ** (-1/2) = 0.01
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), dim=4)
    t = torch.tensor(10.0)
    expected = torch.stack([t.cos(), (0.01 * t).cos(), t.sin(), (0.01 * t).sin()])
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(emb[1], expected)


def test_open_clip_spm_equals_its_base_at_init_and_then_depends_on_t():
    torch.manual_seed(0)
    clip = ClipModel.from_config(TINY_CLIP_CONFIG).eval()
    images = _images()
    with torch.no_grad():
        base = clip.score(images, PROMPTS)
        spm = StepAwarePreferenceModel.from_clip(clip).eval()
        for t in (0, 500, 999):
            timesteps = torch.full((3,), t)
            torch.testing.assert_close(spm.score(images, PROMPTS, timesteps), base)
        _perturb_adapter(spm)
        early, late = (spm.score(images, PROMPTS, torch.full((3,), t)) for t in (0, 900))
    assert not torch.allclose(early, late)
    assert not torch.allclose(early, base)


def test_hf_spm_equals_its_base_at_init():
    tokenizer = _FakeTokenizer()
    images = _images()
    spm = StepAwarePreferenceModel.from_hf(_tiny_hf_clip(), tokenizer).eval()
    plain = _tiny_hf_clip()  # the same weights (same seed), without the timestep hooks
    with torch.no_grad():
        got = spm.score(images, PROMPTS, torch.tensor([0, 400, 999]))
        pixels, tokens = spm.preprocess(images), tokenizer(PROMPTS).input_ids
        image = plain.visual_projection(plain.vision_model(pixel_values=pixels).pooler_output)
        text = plain.text_projection(plain.text_model(input_ids=tokens).pooler_output)
        expected = plain.logit_scale.exp() * torch.nn.functional.cosine_similarity(image, text)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    _perturb_adapter(spm)
    with torch.no_grad():
        assert not torch.allclose(spm.score(images, PROMPTS, torch.tensor([0, 400, 999])), got)


def test_authors_checkpoint_layout_loads_on_top_of_an_hf_clip(tmp_path):
    spm = StepAwarePreferenceModel.from_hf(_tiny_hf_clip(), _FakeTokenizer())
    generator = torch.Generator().manual_seed(3)
    # the released checkpoints: the wrapper's ``model.`` prefix, the whole CLIP plus the
    # added modules (some entries equal to PickScore's own, as theirs are)
    released = {
        f"model.{k}": torch.randn(v.shape, generator=generator)
        for k, v in spm.model.state_dict().items()
        if "adaLN_modulation" in k or k.startswith("t_embedder.")
    }
    released["model.logit_scale"] = spm.model.logit_scale.detach().clone()
    assert "model.vision_model.encoder.layers.1.adaLN_modulation.1.weight" in released
    assert "model.vision_model.adaLN_modulation.1.bias" in released
    assert "model.t_embedder.mlp.2.weight" in released
    torch.save(released, tmp_path / "spm.bin")
    spm.load_weights(read_state_dict(tmp_path / "spm.bin"))
    own = spm.model.state_dict()
    for key, value in released.items():
        torch.testing.assert_close(own[key.removeprefix("model.")], value)


def _released_layout(spm: StepAwarePreferenceModel) -> dict[str, torch.Tensor]:
    """A state dict shaped like the authors' released ``*_step-aware_preference_model.bin``:
    the whole CLIP with the added modules under ``model.``, plus the ``position_ids`` buffers
    that the transformers they saved with still stored."""
    generator = torch.Generator().manual_seed(5)
    released = {
        f"model.{k}": torch.randn(v.shape, generator=generator)
        for k, v in spm.model.state_dict().items()
    }
    for tower, positions in (("text", 77), ("vision", 5)):
        released[f"model.{tower}_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return released


def test_the_exact_released_layout_loads_with_its_stale_position_ids(tmp_path):
    spm = StepAwarePreferenceModel.from_hf(_tiny_hf_clip(), _FakeTokenizer())
    released = _released_layout(spm)
    torch.save(released, tmp_path / "sdxl_step-aware_preference_model.bin")
    spm.load_weights(read_state_dict(tmp_path / "sdxl_step-aware_preference_model.bin"))
    own = spm.model.state_dict()
    weights = {k: v for k, v in released.items() if not k.endswith("position_ids")}
    assert len(weights) == len(own)
    for key, value in weights.items():
        torch.testing.assert_close(own[key.removeprefix("model.")], value)


def test_a_plain_clip_in_the_released_layout_is_not_taken_for_an_spm():
    spm = StepAwarePreferenceModel.from_hf(_tiny_hf_clip(), _FakeTokenizer())
    clip_only = {
        k: v
        for k, v in _released_layout(spm).items()
        if "adaLN_modulation" not in k and "t_embedder" not in k
    }
    with pytest.raises(ValueError, match="not an SPM checkpoint"):
        spm.load_weights(clip_only)


def test_loading_a_checkpoint_for_another_model_is_refused():
    spm = StepAwarePreferenceModel.from_hf(_tiny_hf_clip(), _FakeTokenizer())
    with pytest.raises(ValueError, match="match no parameter"):
        spm.load_weights({"model.vision_model.some_other_layer.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not an SPM checkpoint"):
        spm.load_weights({"model.logit_scale": torch.zeros(())})


def _seeded_tiny_spm() -> StepAwarePreferenceModel:
    """The same random-init tiny SPM on every call (its base CLIP included)."""
    torch.manual_seed(0)
    return StepAwarePreferenceModel.from_clip(ClipModel.from_config(TINY_CLIP_CONFIG))


def _scores(spm: StepAwarePreferenceModel) -> torch.Tensor:
    with torch.no_grad():
        return spm.score(_images(), PROMPTS, torch.tensor([5, 300, 800]))


def test_spm_adapter_round_trips_through_safetensors(tmp_path):
    spm = _seeded_tiny_spm()
    _perturb_adapter(spm)
    spm.save_adapter(tmp_path)
    fresh = _seeded_tiny_spm()
    fresh.load_weights(read_state_dict(tmp_path))
    torch.testing.assert_close(_scores(fresh), _scores(spm))


def test_the_tiny_world_spm_is_the_shipped_one():
    """``algo=spo model=tiny`` (conf/recipe/spo_tiny.yaml) scores with the trained tiny SPM,
    whose step-aware weights make its scores depend on t; the base CLIP alone gets none."""
    shipped = read_state_dict(asset_path("spm"))
    spm = load_spm(asset_path("pickscore"), asset_path("spm"))
    for name, value in spm.adapter_state_dict().items():
        torch.testing.assert_close(value, shipped[name].float())
    images = _images()
    with torch.no_grad():
        early = spm.score(images, PROMPTS, torch.tensor([900, 900, 900]))
        late = spm.score(images, PROMPTS, torch.tensor([0, 0, 0]))
    assert not torch.allclose(early, late)
    untrained = load_spm(asset_path("pickscore"))
    with torch.no_grad():
        torch.testing.assert_close(
            untrained.score(images, PROMPTS, torch.tensor([900, 900, 900])),
            untrained.score(images, PROMPTS, torch.tensor([0, 0, 0])),
        )


def test_spm_adapter_saved_in_half_precision_is_half_the_size_and_scores_alike(tmp_path):
    spm = _seeded_tiny_spm()
    _perturb_adapter(spm)
    full = spm.save_adapter(tmp_path / "full")
    half = spm.save_adapter(tmp_path / "half", torch.float16)
    assert {v.dtype for v in read_state_dict(half).values()} == {torch.float16}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    fresh = _seeded_tiny_spm()
    fresh.load_weights(read_state_dict(half))
    torch.testing.assert_close(_scores(fresh), _scores(spm), atol=2e-2, rtol=1e-3)
