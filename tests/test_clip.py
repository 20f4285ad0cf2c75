"""ClipModel (open_clip with torch preprocessing) and the PickScore loss."""

import math

import pytest
import torch
from torchvision import transforms

from alignkit.rewards.clip import WEIGHTS_FILE, ClipModel
from alignkit.rewards.preference import preference_loss

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red circle", "a blue square"]


def _tiny_clip() -> ClipModel:
    torch.manual_seed(0)
    return ClipModel.from_config(TINY_CFG).eval()


def test_preprocessing_matches_torchvision_resize_crop_normalise():
    clip = _tiny_clip()
    images = torch.rand(2, 3, 48, 40)
    official = transforms.Compose(
        [
            transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(32),
            transforms.Normalize(clip.mean.flatten().tolist(), clip.std.flatten().tolist()),
        ]
    )
    expected = torch.stack([official(image) for image in images])
    assert torch.allclose(clip.preprocess(images), expected, atol=1e-4)


def test_scores_are_the_scaled_cosine_and_reach_the_pixels():
    clip = _tiny_clip()
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores = clip.score(images, PROMPTS)
    image_features = clip.image_features(images)
    text_features = clip.text_features(PROMPTS)
    expected = clip.logit_scale * (image_features * text_features).sum(-1)
    assert torch.allclose(scores, expected)
    assert clip.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's init
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_a_saved_model_scores_the_same_and_sparse_token_rows_ship_small(tmp_path):
    clip = _tiny_clip()
    images = torch.rand(2, 3, 32, 32)
    dense = ClipModel.from_folder(clip.save(tmp_path / "dense")).eval()
    kept = clip.tokenize(PROMPTS + [""]).unique().tolist()
    sparse = ClipModel.from_folder(clip.save(tmp_path / "sparse", token_ids=kept)).eval()
    with torch.no_grad():
        assert torch.allclose(dense.score(images, PROMPTS), sparse.score(images, PROMPTS))
        assert torch.allclose(dense.score(images, PROMPTS), clip.score(images, PROMPTS), atol=0.05)
    size = {name: (tmp_path / name / WEIGHTS_FILE).stat().st_size for name in ("dense", "sparse")}
    assert size["sparse"] < size["dense"] / 5  # 49408 x 32 rows dominate the dense file
    embedding = sparse.model.token_embedding.weight
    unused = [row for row in range(100) if row not in kept]
    assert embedding[unused].abs().sum() == 0


def test_a_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="local folder"):
        ClipModel.from_folder(tmp_path / "nothing")


def test_preference_loss_matches_hand_computation_with_a_tie():
    scores_0, scores_1 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    loss = preference_loss(scores_0, scores_1, torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5]))
    first = -math.log(math.exp(2) / (math.exp(2) + 1))
    tie = -0.5 * math.log(1 / (1 + math.e)) - 0.5 * math.log(math.e / (1 + math.e))
    assert loss.item() == pytest.approx((first + tie) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        preference_loss(scores_0, scores_1, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
