"""reward=clip_style: cos(image, style prompt) - cos(image, neutral prompt), on a tiny CLIP."""

import pytest
import torch

from alignkit.rewards import build_configured_reward, build_reward
from alignkit.rewards.clip import ClipModel
from tests.helpers import compose_config
from tests.test_clip import TINY_CFG


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    return ClipModel.from_config(TINY_CFG).save(tmp_path_factory.mktemp("clip") / "tiny")


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_the_score_is_the_difference_of_two_cosines_and_reaches_the_pixels(clip_folder):
    reward = build_reward(
        "clip_style", path=str(clip_folder), style_prompt="a sketch", neutral_prompt="a photo"
    )
    model = ClipModel.from_folder(clip_folder).eval()
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    scores = reward(images, ["ignored"] * 3)
    with torch.no_grad():
        image = unit(model.model.encode_image(model.preprocess(images)))
        text = unit(model.model.encode_text(model.tokenize(["a sketch", "a photo"])))
    expected = image @ text[0] - image @ text[1]
    assert torch.allclose(scores, expected, atol=1e-5)
    assert scores.abs().max() > 1e-3  # a random CLIP still tells the two texts apart
    scores.sum().backward()
    assert images.grad.abs().sum() > 0
    same_texts = build_reward(
        "clip_style", path=str(clip_folder), style_prompt="a photo", neutral_prompt="a photo"
    )
    assert torch.allclose(same_texts(images, ["x"] * 3), torch.zeros(3))
    default_neutral = build_reward("clip_style", path=str(clip_folder), style_prompt="a photo")
    assert not torch.allclose(default_neutral(images, ["x"] * 3), torch.zeros(3))  # "an image"


def test_the_config_option_builds_it(clip_folder):
    cfg = compose_config(
        "reward=clip_style", f"reward.path={clip_folder}", "reward.style_prompt=a sketch"
    )
    assert cfg.reward.neutral_prompt == "an image"
    reward = build_configured_reward(cfg.reward)
    images = torch.rand(2, 3, 32, 32)
    direct = build_reward("clip_style", path=str(clip_folder), style_prompt="a sketch")
    assert torch.allclose(reward(images, ["x", "y"]), direct(images, ["x", "y"]))


def test_missing_settings_are_named(clip_folder, tmp_path):
    with pytest.raises(ValueError, match="needs reward.style_prompt"):
        build_reward("clip_style", path=str(clip_folder))
    with pytest.raises(ValueError, match="needs reward.neutral_prompt"):
        build_reward(
            "clip_style", path=str(clip_folder), style_prompt="a sketch", neutral_prompt=" "
        )
    with pytest.raises(ValueError, match="reward=clip_style needs a local model"):
        build_reward("clip_style", style_prompt="a sketch")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("clip_style", path=str(tmp_path / "none"), style_prompt="a sketch")
