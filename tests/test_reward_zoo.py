"""The reward zoo on tiny random-init models of the real classes: shapes, gradients to the
pixels, the official preprocessing, loading errors, combinations."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from alignkit.models.tokenizer import offline_clip_tokenizer
from alignkit.rewards import build_configured_reward, build_reward
from alignkit.rewards.aesthetic import AestheticHead, AestheticReward, aesthetic
from alignkit.rewards.clip import ClipModel, CLIPScoreReward
from alignkit.rewards.combo import WeightedRewards
from alignkit.rewards.hps import HPSReward, hpsv2
from alignkit.rewards.pickscore import HFClipScorer, PickScoreReward, pickscore
from alignkit.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize_crop_normalise

#: float resizing vs PIL's 8-bit resize (and bicubic kernels that differ slightly): the
#: tolerance docs/rewards.md states, in normalised units (1/255 of a pixel is ~0.015).
MEAN_TOLERANCE, MAX_TOLERANCE = 0.01, 0.1
PROMPTS = ["a red circle", "two blue squares"]
TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
MEAN, STD = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)


def _smooth_images(height: int, width: int, count: int = 2) -> torch.Tensor:
    """8-bit-exact images (what a PIL pipeline sees) with structure at several scales."""
    generator = torch.Generator().manual_seed(height * width)
    coarse = torch.rand((count, 3, 6, 6), generator=generator)
    images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    images = images + 0.1 * torch.rand((count, 3, height, width), generator=generator)
    return (images.clamp(0, 1) * 255).round() / 255


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())


def _assert_close_to_official(ours: torch.Tensor, official: torch.Tensor) -> None:
    assert ours.shape == official.shape
    diff = (ours - official).abs()
    assert diff.mean() < MEAN_TOLERANCE, f"mean |diff| {diff.mean():.4f}"
    assert diff.max() < MAX_TOLERANCE, f"max |diff| {diff.max():.4f}"


@pytest.mark.parametrize("size", [(64, 64), (300, 260), (180, 240)])
def test_shortest_side_preprocessing_matches_open_clip_and_transformers(size):
    images = _smooth_images(*size)
    ours = resize_crop_normalise(images, (224, 224), "shortest", "bicubic", MEAN, STD)
    transform = open_clip.image_transform(
        224, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, resize_mode="shortest"
    )
    _assert_close_to_official(ours, torch.stack([transform(_pil(im)) for im in images]))
    processor = CLIPImageProcessor()  # OpenAI CLIP's: PickScore's processor has these numbers
    official = processor([_pil(im) for im in images], return_tensors="pt").pixel_values
    _assert_close_to_official(ours, official)


@pytest.mark.parametrize("size", [(300, 260), (120, 200)])
def test_longest_side_preprocessing_matches_open_clip_padding(size):
    images = _smooth_images(*size)
    ours = resize_crop_normalise(images, (224, 224), "longest", "bicubic", MEAN, STD)
    transform = open_clip.image_transform(
        224, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, resize_mode="longest"
    )
    official = torch.stack([transform(_pil(im)) for im in images])
    _assert_close_to_official(ours, official)
    black = (-MEAN / STD).view(3, 1, 1)
    edge = ours[0, :, :, 0] if size[0] > size[1] else ours[0, :, 0, :]  # the padded side
    torch.testing.assert_close(edge, black[:, :, 0].expand(3, 224))


def _tiny_hf_scorer() -> HFClipScorer:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 49408,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=16,
    )
    return HFClipScorer(CLIPModel(config).eval(), offline_clip_tokenizer())


def test_pickscore_matches_transformers_on_its_official_pipeline():
    scorer = _tiny_hf_scorer()
    reward = PickScoreReward(scorer)
    images = _smooth_images(64, 64).requires_grad_(True)
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,)
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    processor = CLIPImageProcessor()
    pixels = processor([_pil(im) for im in images.detach()], return_tensors="pt").pixel_values
    tokens = scorer.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(pixel_values=pixels, **tokens)
    torch.testing.assert_close(scores.detach(), out.logits_per_image.diagonal(), atol=0.05, rtol=0)


def test_pickscore_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"could not load CLIPModel.*reward.path="):
        pickscore(path=str(tmp_path / "absent"))


def _tiny_open_clip() -> ClipModel:
    torch.manual_seed(0)
    return ClipModel.from_config(TINY_OPEN_CLIP, {"mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD})


def test_hps_scores_the_cosine_with_longest_side_padding(tmp_path):
    folder = _tiny_open_clip().save(tmp_path / "hps")
    reward = hpsv2(path=folder)
    assert isinstance(reward, HPSReward) and reward.clip.resize_mode == "longest"
    images = _smooth_images(40, 64).requires_grad_(True)
    scores = reward(images, PROMPTS)
    expected = (reward.clip.image_features(images) * reward.clip.text_features(PROMPTS)).sum(-1)
    torch.testing.assert_close(scores, expected)
    assert scores.abs().max() <= 1.0 + 1e-5
    scores.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reward.checkpoint=.*HPS_v2.1"):
        hpsv2()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hpsv2(checkpoint=tmp_path / "missing.pt")


def test_aesthetic_head_has_the_released_layout_and_loads_both_formats(tmp_path):
    head = AestheticHead()
    linear = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (768, 1024),
        (1024, 128),
        (128, 64),
        (64, 16),
        (16, 1),
    ]
    assert sorted({k.split(".")[1] for k in head.state_dict()}) == ["0", "2", "4", "6", "7"]
    small = AestheticHead(32)
    save_file(small.state_dict(), str(tmp_path / "head.safetensors"))
    torch.save(small.state_dict(), tmp_path / "head.pth")
    probe = torch.randn(3, 32)
    for name in ("head.safetensors", "head.pth"):
        loaded = AestheticHead.load(tmp_path / name).eval()
        torch.testing.assert_close(loaded(probe), small.eval()(probe))


def test_aesthetic_reward_is_the_head_on_normalised_embeddings(tmp_path):
    clip = _tiny_open_clip()
    head = AestheticHead(32)
    save_file(head.state_dict(), str(tmp_path / "head.safetensors"))
    reward = aesthetic(head=tmp_path / "head.safetensors", path=clip.save(tmp_path / "clip"))
    images = _smooth_images(64, 64).requires_grad_(True)
    scores = reward(images, PROMPTS)
    features = reward.clip.model.encode_image(reward.clip.preprocess(images))
    expected = reward.head(features / features.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(scores, expected)
    scores.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="takes 768-d embeddings but the CLIP gives 32-d"):
        AestheticReward(clip, AestheticHead())
    with pytest.raises(ValueError, match="reward.head="):
        aesthetic()


def test_clipscore_is_a_hundred_times_the_clamped_cosine(tmp_path):
    reward = build_reward("clipscore", path=str(_tiny_open_clip().save(tmp_path / "c")))
    assert isinstance(reward, CLIPScoreReward)
    images = _smooth_images(32, 32)
    cosine = reward.clip.cosine(images, PROMPTS)
    torch.testing.assert_close(reward(images, PROMPTS), 100 * cosine.clamp(min=0))
    with pytest.raises(ValueError, match="reward=clipscore needs a local model"):
        build_reward("clipscore")
    with pytest.raises(ValueError, match="model_name='ViT-B-32' needs reward.checkpoint"):
        build_reward("clipscore", model_name="ViT-B-32")


def test_low_level_rewards_by_hand():
    mirror = torch.zeros(1, 3, 4, 4)
    mirror[..., 0], mirror[..., 3] = 1.0, 1.0
    left = torch.zeros(1, 3, 4, 4)
    left[..., :2] = 0.8
    symmetry = build_reward("symmetry")
    assert symmetry(mirror, ["x"]).item() == 0.0
    assert symmetry(left, ["x"]).item() == pytest.approx(-0.8)
    assert build_reward("left_bright")(left, ["x"]).item() == pytest.approx(0.8)


def test_combo_is_the_weighted_sum_and_checks_its_settings():
    images = torch.rand(2, 3, 8, 8)
    combo = build_reward("combo", weights={"symmetry": 2.0, "left_bright": -0.5})
    expected = 2.0 * build_reward("symmetry")(images, PROMPTS) - 0.5 * build_reward("left_bright")(
        images, PROMPTS
    )
    torch.testing.assert_close(combo(images, PROMPTS), expected)
    assert combo.differentiable
    assert not build_reward("combo", weights={"oracle": 1.0, "symmetry": 1.0}).differentiable
    with pytest.raises(ValueError, match="needs reward.weights"):
        WeightedRewards({})
    with pytest.raises(ValueError, match="must map reward names to numbers"):
        build_reward("combo", weights={"symmetry": "high"})
    with pytest.raises(ValueError, match=r"reward.options names \['pickscore'\]"):
        build_reward("combo", weights={"symmetry": 1.0}, options={"pickscore": {"path": "/m"}})


def test_options_a_reward_does_not_take_are_named():
    with pytest.raises(ValueError, match=r"reward=symmetry does not use reward.head"):
        build_reward("symmetry", head="/x")

    class Config:
        name, path, checkpoint, model_name, processor, head, weights, options = (
            "symmetry",
            None,
            None,
            None,
            None,
            None,
            None,
            {},
        )

    assert build_configured_reward(Config()) is not None
    Config.name = "none"
    assert build_configured_reward(Config()) is None


def test_name_at_path_is_shorthand_for_the_path(tmp_path):
    folder = _tiny_open_clip().save(tmp_path / "c")
    reward = build_reward(f"clipscore@{folder}")
    assert np.isfinite(reward(_smooth_images(32, 32), PROMPTS).numpy()).all()
