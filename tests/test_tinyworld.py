import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alignkit.tinyworld import (
    PromptSpec,
    Variation,
    all_prompts,
    draw,
    fidelity_ok,
    heldout_prompts,
    judge_breakdown,
    judge_scores,
    judge_scores_torch,
    label_pair,
    pairs_from_images,
    parse_prompt,
    render,
    render_pairs,
    train_prompts,
    write_parquet_folder,
)
from alignkit.tinyworld.assets import asset_path
from alignkit.tinyworld.grammar import BACKGROUNDS, COLOURS, SHAPES, all_specs
from alignkit.tinyworld.pairs import COLUMNS, decode_jpeg, main

PROMPT = "a red triangle on a white background"
IDEAL = Variation(centre=(32.0, 32.0), radius=26.0, angle=0.2, edge_blur=0.0, washout=0.0)


def _samples(count: int, first_seed: int = 0) -> tuple[np.ndarray, list[PromptSpec]]:
    specs = [all_specs()[i % 96] for i in range(count)]
    return np.stack([render(s, first_seed + i) for i, s in enumerate(specs)]), specs


def _ideal(spec: PromptSpec, **changes) -> np.ndarray:
    """Large, centred, crisp and at full contrast, unless ``changes`` say otherwise."""
    return draw(spec, dataclasses.replace(IDEAL, **changes))


# grammar


def test_prompts_round_trip_through_the_parser():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == len(SHAPES) * len(COLOURS) * len(BACKGROUNDS)
    assert [parse_prompt(p).text for p in prompts] == prompts
    spec = parse_prompt("  A Cyan  cross on a DARK BLUE background ")
    assert spec == PromptSpec("cross", "cyan", "dark blue")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("a purple circle on a black background", "'purple'"),
        ("a red hexagon on a black background", "'hexagon'"),
        ("a red circle on a pink background", "'pink'"),
    ],
)
def test_parse_prompt_names_the_bad_word_and_the_valid_ones(text, named):
    with pytest.raises(ValueError, match=named) as error:
        parse_prompt(text)
    assert "valid" in str(error.value)


def test_parse_prompt_rejects_text_outside_the_template():
    with pytest.raises(ValueError, match="does not follow"):
        parse_prompt("red circle, black background")


def test_split_is_disjoint_about_one_fifth_and_covers_the_vocabulary():
    train, heldout = set(train_prompts()), set(heldout_prompts())
    assert not train & heldout
    assert train | heldout == set(all_prompts())
    assert 0.15 < len(heldout) / len(all_prompts()) < 0.25
    held_specs = [parse_prompt(p) for p in heldout]
    assert {s.shape for s in held_specs} == set(SHAPES)
    assert {s.colour for s in held_specs} == set(COLOURS)
    train_pairs = {(s.shape, s.colour) for s in map(parse_prompt, train)}
    assert {(s.shape, s.colour) for s in held_specs} <= train_pairs


# renderer


def test_render_is_deterministic_per_prompt_and_seed():
    image = render(PROMPT, 3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render(parse_prompt(PROMPT), 3))
    assert not np.array_equal(image, render(PROMPT, 4))
    assert not np.array_equal(image, render("a red square on a white background", 3))


def test_a_plain_drawing_has_exactly_the_prompted_colours():
    spec = PromptSpec("square", "green", "grey")
    image = _ideal(spec)
    assert np.array_equal(image[32, 32], COLOURS["green"])
    assert np.array_equal(image[1, 1], BACKGROUNDS["grey"])


def test_renders_show_the_prompted_colour():
    images, specs = _samples(96)
    for image, spec in zip(images, specs):
        background = np.asarray(spec.background_rgb, float)
        distance = np.linalg.norm(image - background, axis=-1)
        core = image[distance > 0.75 * distance.max()].mean(0) - background
        directions = {name: np.asarray(rgb) - background for name, rgb in COLOURS.items()}
        cosines = {
            name: core @ d / (np.linalg.norm(core) * np.linalg.norm(d))
            for name, d in directions.items()
        }
        assert max(cosines, key=cosines.get) == spec.colour
        assert cosines[spec.colour] > np.cos(np.radians(15))


# judge


def test_judge_ranks_good_above_bad_wrong_colour_and_wrong_shape():
    spec = parse_prompt(PROMPT)
    good = _ideal(spec)
    bad = _ideal(spec, centre=(12.0, 50.0), radius=8.0, edge_blur=2.0)
    washed = _ideal(spec, washout=0.6)
    wrong_colour = _ideal(PromptSpec("triangle", "blue", "white"))
    wrong_shape = _ideal(PromptSpec("square", "red", "white"))
    images = np.stack([good, bad, washed, wrong_colour, wrong_shape])
    terms = judge_breakdown(images, [spec] * 5)
    score = terms["score"]
    assert score[0] > 0.9
    assert score[0] > score[1] + 0.2 and score[0] > score[2] + 0.1
    assert max(score[3], score[4]) < 0.1
    assert terms["size"][1] < terms["size"][0]
    assert terms["centring"][1] < terms["centring"][0]
    assert terms["crispness"][1] < terms["crispness"][0]
    assert terms["contrast"][2] < terms["contrast"][0]


def test_judge_gives_an_empty_image_no_credit():
    blank = np.full((1, 64, 64, 3), BACKGROUNDS["black"], np.uint8)
    prompt = ["a red circle on a black background"]
    assert judge_scores(blank, prompt)[0] == 0.0
    assert not fidelity_ok(blank, prompt)[0]


def test_fidelity_holds_on_renders_and_fails_on_other_shapes_and_colours():
    images, specs = _samples(192, first_seed=1000)
    assert fidelity_ok(images, specs).mean() > 0.95
    rng = np.random.default_rng(0)
    other_shape = [
        PromptSpec(str(rng.choice([x for x in SHAPES if x != s.shape])), s.colour, s.background)
        for s in specs
    ]
    other_colour = [
        PromptSpec(s.shape, str(rng.choice([x for x in COLOURS if x != s.colour])), s.background)
        for s in specs
    ]
    assert fidelity_ok(images, other_shape).mean() < 0.02
    assert fidelity_ok(images, other_colour).mean() < 0.02


def test_judge_accepts_float_chw_and_other_sizes():
    images, specs = _samples(8)
    expected = judge_scores(images, specs)
    chw = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert judge_scores(chw, specs) == pytest.approx(expected)
    doubled = torch.nn.functional.interpolate(chw, scale_factor=2, mode="nearest")
    assert judge_scores(doubled, specs) == pytest.approx(expected, abs=0.05)
    with pytest.raises(ValueError, match="8 images but 2 prompts"):
        judge_scores(images, specs[:2])


def test_torch_judge_agrees_with_the_oracle_and_has_gradients():
    images, specs = _samples(120, first_seed=5000)
    oracle = judge_scores(images, specs)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).requires_grad_()
    soft = judge_scores_torch(pixels, specs)
    first, second = np.triu_indices(len(specs), k=1)
    soft_np = soft.detach().numpy()
    agree = np.sign(oracle[first] - oracle[second]) == np.sign(soft_np[first] - soft_np[second])
    assert agree.mean() >= 0.85
    soft.sum().backward()
    assert torch.isfinite(pixels.grad).all()
    assert (pixels.grad.flatten(1).abs().sum(1) > 0).float().mean() > 0.9


def test_torch_judge_resizes_other_sizes():
    images, specs = _samples(4)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    larger = torch.nn.functional.interpolate(pixels, size=96, mode="bilinear")
    expected = judge_scores_torch(pixels, specs)
    assert judge_scores_torch(larger, specs) == pytest.approx(expected.tolist(), abs=0.05)


# pairs


def test_label_pair_prefers_the_higher_score_outside_the_tie_margin():
    assert label_pair(0.8, 0.5, tie_margin=0.1) == (1.0, 0.0)
    assert label_pair(0.5, 0.8, tie_margin=0.1) == (0.0, 1.0)
    assert label_pair(0.55, 0.5, tie_margin=0.1) == (0.5, 0.5)
    assert label_pair(0.5, 0.5, tie_margin=0.0) == (0.5, 0.5)


def test_pairs_from_images_labels_the_better_image():
    spec = parse_prompt(PROMPT)
    good, bad = _ideal(spec), _ideal(spec, centre=(12.0, 50.0), radius=8.0, edge_blur=2.0)
    df = pairs_from_images([PROMPT, PROMPT], [good, bad], [bad, good], tie_margin=0.01)
    assert list(df.columns) == list(COLUMNS)
    assert df["label_0"].tolist() == [1.0, 0.0]
    assert df["label_1"].tolist() == [0.0, 1.0]


def test_render_pairs_round_trip_through_parquet(tmp_path):
    prompts = heldout_prompts()[:3]
    df = render_pairs(prompts, pairs_per_prompt=2, seed=1, tie_margin=0.02)
    paths = write_parquet_folder(df, tmp_path / "pairs", rows_per_file=4)
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet"]
    back = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    assert list(back.columns) == list(COLUMNS)
    assert back["caption"].tolist() == [p for p in prompts for _ in range(2)]
    assert ((back["label_0"] + back["label_1"]) == 1.0).all()
    assert set(back["label_0"]) <= {0.0, 0.5, 1.0}
    for column in ("jpg_0", "jpg_1"):
        decoded = np.stack([decode_jpeg(b) for b in back[column]])
        assert decoded.shape == (6, 64, 64, 3)
    assert not np.array_equal(decode_jpeg(back["jpg_0"][0]), decode_jpeg(back["jpg_1"][0]))
    images = {c: np.stack([decode_jpeg(b) for b in back[c]]) for c in ("jpg_0", "jpg_1")}
    scores = [judge_scores(images[c], back["caption"]) for c in ("jpg_0", "jpg_1")]
    relabelled = [label_pair(a, b, 0.02)[0] for a, b in zip(*scores)]
    assert relabelled == back["label_0"].tolist()


def test_pairs_command_line_writes_a_folder(tmp_path, capsys):
    main(["--out", str(tmp_path), "--pairs-per-prompt", "1", "--split", "heldout", "--seed", "2"])
    df = pd.read_parquet(tmp_path / "part-00000.parquet")
    assert df["caption"].tolist() == heldout_prompts()
    assert "wrote 19 pairs" in capsys.readouterr().out


def test_the_shipped_artifacts_stay_under_30_mb():
    """The issue's budget for everything the tiny world ships (a new asset must fit in it)."""
    root = Path(asset_path("base_model")).parent
    total = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    assert total < 30_000_000, f"{root} holds {total / 1e6:.2f} MB"
