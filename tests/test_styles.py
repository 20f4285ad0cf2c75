"""The tiny world's styles: exact scores, transforms, the shipped style pairs and the rewards."""

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from alignkit.rewards import build_configured_reward, build_reward
from alignkit.tinyworld import train_prompts
from alignkit.tinyworld.assets import asset_path
from alignkit.tinyworld.style_pairs import (
    original_renders,
    style_pair_table,
    winners_and_losers,
)
from alignkit.tinyworld.styles import STYLES, apply_style, style_score
from tests.helpers import compose_config


def uniform(rgb: tuple[float, float, float], size: int = 8) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float64)[None, :, None, None].expand(1, 3, size, size)


def row_wave(height: int, cycles: int, amplitude: float, phase: float) -> torch.Tensor:
    """Grey image ``0.5 + amplitude cos(2 pi cycles (y + 1/2) / H + phase)``, constant along x."""
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    wave = 0.5 + amplitude * torch.cos(2 * math.pi * cycles * rows / height + phase)
    return wave[None, None, :, None].expand(1, 3, height, 16).contiguous()


def test_sketch_score_is_mean_luminance_minus_mean_chroma():
    orange = uniform((0.8, 0.5, 0.2))
    expected = (0.299 * 0.8 + 0.587 * 0.5 + 0.114 * 0.2) - (0.8 - 0.2)
    assert style_score("sketch", orange).item() == pytest.approx(expected, abs=1e-12)
    half_white = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    half_white[..., :4, :] = 1.0
    assert style_score("sketch", half_white).item() == pytest.approx(0.5, abs=1e-12)


def test_winter_score_is_mean_blue_minus_red():
    image = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    image[0, 0, :2], image[0, 2, :2] = 0.1, 0.9  # top half: blue - red = 0.8
    image[0, 0, 2:], image[0, 2, 2:] = 0.6, 0.2  # bottom half: -0.4
    assert style_score("winter", image).item() == pytest.approx(0.2, abs=1e-12)


@pytest.mark.parametrize("height", [32, 64])
def test_stripes_score_is_the_amplitude_of_four_bands_per_height(height):
    assert style_score("stripes", row_wave(height, 4, 0.3, 0.7)).item() == pytest.approx(
        0.3, abs=1e-6
    )
    assert style_score("stripes", row_wave(height, 3, 0.3, 0.7)).item() == pytest.approx(
        0.0, abs=1e-6
    )
    columns = row_wave(height, 4, 0.3, 0.7).transpose(-1, -2)[..., :height, :height]
    assert style_score("stripes", columns.contiguous()).item() == pytest.approx(0.0, abs=1e-6)


def test_transforms_on_constructed_images():
    assert torch.equal(
        apply_style("sketch", uniform((0.8, 0.5, 0.2))), torch.ones(1, 3, 8, 8).double()
    )
    step = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    step[..., 3:] = 1.0  # black left half, white right half
    drawn = apply_style("sketch", step)[0, 0, 0]
    # central differences of 0.5 in 3 channels: magnitude 0.87 > 0.25, so full pencil (0.3)
    assert drawn.tolist() == pytest.approx([1.0, 1.0, 0.3, 0.3, 1.0, 1.0])
    grey = apply_style("winter", uniform((0.5, 0.5, 0.5)))
    assert grey[0, :, 0, 0].tolist() == pytest.approx([0.3, 0.525, 0.7])
    banded = apply_style("stripes", torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    assert style_score("stripes", banded).item() == pytest.approx(0.4 * 0.5, abs=1e-6)


def test_scores_have_gradients_and_bad_input_is_named():
    for name in STYLES:
        images = torch.full((2, 3, 16, 16), 0.5, requires_grad=True)
        style_score(name, images).sum().backward()
        assert torch.isfinite(images.grad).all(), name
    with pytest.raises(ValueError, match="unknown style='van_gogh'; choose one of: sketch"):
        style_score("van_gogh", torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        style_score("winter", torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="divide by 255"):
        style_score("winter", torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_shipped_style_pairs_are_well_formed_and_reproducible(style):
    table = pd.read_parquet(asset_path(f"style_pairs/{style}"))
    assert list(table["caption"]) == train_prompts()
    labels = list(zip(table["label_0"], table["label_1"]))
    assert labels == [(1.0, 0.0) if row % 2 == 0 else (0.0, 1.0) for row in range(len(table))]
    winners, losers = winners_and_losers(table)
    assert winners.shape == (77, 3, 32, 32)
    assert (style_score(style, winners) > style_score(style, losers)).all()
    # the losers are the renders at the model's pixels, the winners their styled copies
    captions, originals = original_renders(train_prompts(), per_prompt=1, seed=0)
    rebuilt_w, rebuilt_l = winners_and_losers(style_pair_table(style, captions, originals))
    assert torch.equal(losers, rebuilt_l) and torch.equal(winners, rebuilt_w)


def test_rewards_score_the_style_and_check_their_options():
    images = torch.rand(3, 3, 32, 32)
    for style in STYLES:
        expected = style_score(style, images)
        assert torch.allclose(build_reward(f"style_{style}")(images, ["x"] * 3), expected)
        assert torch.allclose(build_reward("tiny_style", style=style)(images, ["x"] * 3), expected)
    with pytest.raises(ValueError, match="needs reward.style="):
        build_reward("tiny_style")
    with pytest.raises(ValueError, match="unknown reward.style='gothic'"):
        build_reward("tiny_style", style="gothic")
    with pytest.raises(ValueError, match="does not use reward.style"):
        build_reward("style_winter", style="sketch")


def test_config_options_pick_the_style():
    cfg = compose_config("data=tiny_style_pairs", "data.style=winter", "reward=tiny_style")
    assert cfg.data.path == asset_path("style_pairs/winter")
    assert cfg.data.kind == "pairs"
    reward = build_configured_reward(
        compose_config("reward=tiny_style", "reward.style=stripes").reward
    )
    assert reward.style == "stripes"
    with pytest.raises(ValueError, match="unknown data.style='oil'"):
        _ = compose_config("data=tiny_style_pairs", "data.style=oil").data.path


def test_an_unknown_style_on_the_command_line_is_one_error_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignkit",
            "data=tiny_style_pairs",
            "data.style=oil",
            f"output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "alignkit: error: ValueError raised while resolving interpolation: unknown "
        "data.style='oil'; choose one of: sketch, winter, stripes"
    ]
