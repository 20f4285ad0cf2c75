"""Evaluation: win rates, the image grid, and a whole evaluation on a tiny random model."""

import json

import numpy
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from alignkit.config import EvalConfig, TrainerConfig
from alignkit.evaluation import evaluate, image_grid, results_table, win_rate
from alignkit.evaluation import main as evaluation_main
from alignkit.run_record import read_run_record
from alignkit.tinyworld.assets import asset_path
from tests.model_helpers import tiny_backbone


def test_win_rate_counts_ties_as_half_with_a_normal_interval():
    result = win_rate(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 2.0, 5.0, 1.0]))
    # outcomes 1, 0.5, 0, 1: mean 0.625, population std sqrt(0.171875)
    half_width = 1.96 * 0.171875**0.5 / 2
    assert result.rate == pytest.approx(0.625)
    assert result.ci_low == pytest.approx(0.625 - half_width)
    assert result.ci_high == 1.0  # clipped from 1.03
    assert result.n == 4


def test_grid_puts_base_left_and_aligned_right():
    base = torch.zeros(4, 3, 8, 8)
    aligned = torch.ones(4, 3, 8, 8)
    grid = image_grid(base, aligned, rows=2, cols=2)
    assert grid.size == (2 * 2 * 96 + 6, 18 + 2 * 96)
    assert grid.getpixel((10, 40)) == (0, 0, 0)
    assert grid.getpixel((2 * 96 + 6 + 10, 40)) == (255, 255, 255)


def _small_eval(tmp_path, **overrides) -> EvalConfig:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a white background\na blue square on a black background\n")
    settings = dict(
        prompts=str(prompts), seeds_per_prompt=2, steps=2, rewards=["oracle"], grid_prompts=2
    )
    settings.update(overrides)
    return EvalConfig(**settings)


def test_an_untrained_adapter_ties_the_base_everywhere(tmp_path):
    backbone = tiny_backbone("sd", resolution=64)
    results = evaluate(backbone, _small_eval(tmp_path), tmp_path / "run")
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert written == results
    oracle = results["rewards"]["oracle"]
    assert results["samples"] == 4
    assert oracle["base"] == pytest.approx(oracle["aligned"])
    assert oracle["win_rate"]["rate"] == 0.5  # identical images: every comparison a tie
    assert Image.open(tmp_path / "run" / "eval_grid.png").size == (2 * 2 * 96 + 6, 18 + 2 * 96)
    assert "| oracle |" in results_table(results)


def _grid_halves(folder):
    grid = torch.from_numpy(numpy.array(Image.open(folder / "eval_grid.png"))).float()
    width = (grid.shape[1] - 6) // 2
    return grid[18:, :width], grid[18:, width + 6 :]


def test_a_changed_adapter_changes_the_aligned_images_only(tmp_path):
    backbone = tiny_backbone("sd", resolution=64)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in backbone.trainable_parameters():
            parameter.add_(torch.randn_like(parameter))
    evaluate(backbone, _small_eval(tmp_path), tmp_path / "a")
    base, aligned = _grid_halves(tmp_path / "a")
    assert (base - aligned).abs().mean() > 1.0
    with torch.no_grad():
        for parameter in backbone.trainable_parameters():
            parameter.zero_()
    evaluate(backbone, _small_eval(tmp_path), tmp_path / "b")
    base_again, aligned_again = _grid_halves(tmp_path / "b")
    assert torch.equal(base_again, base) and torch.equal(aligned_again, base)


def test_an_unknown_reward_lists_the_registered_ones(tmp_path):
    backbone = tiny_backbone("sd", resolution=64)
    with pytest.raises(KeyError, match="registered: .*oracle"):
        evaluate(backbone, _small_eval(tmp_path, rewards=["pickscroe"]), tmp_path)


def test_eval_json_keeps_every_comparison_for_pairing_runs(tmp_path):
    backbone = tiny_backbone("sd", resolution=64)
    settings = _small_eval(tmp_path, rewards=["oracle", "tiny_clip"])
    evaluate(backbone, settings, tmp_path / "untrained")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in backbone.trainable_parameters():
            parameter.add_(torch.randn_like(parameter))
    evaluate(backbone, settings, tmp_path / "changed")
    before, after = (
        json.loads((tmp_path / name / "eval.json").read_text()) for name in ("untrained", "changed")
    )
    prompts = (tmp_path / "prompts.txt").read_text().splitlines()
    expected = {"prompt": [prompts[0]] * 2 + [prompts[1]] * 2, "seed": [0, 1, 0, 1]}
    assert after["comparisons"] == expected
    for name in ("oracle", "tiny_clip"):
        entry = after["rewards"][name]
        base, aligned = (torch.tensor(entry["scores"][side]) for side in ("base", "aligned"))
        assert base.tolist() == before["rewards"][name]["scores"]["base"]  # same base samples
        assert entry["base"] == pytest.approx(base.mean().item())
        assert entry["aligned"] == pytest.approx(aligned.mean().item())
        assert entry["win_rate"]["rate"] == win_rate(aligned, base).rate
    clip_before, clip_after = (run["rewards"]["tiny_clip"]["scores"] for run in (before, after))
    assert clip_after["aligned"] != clip_before["aligned"]


def _stored_run(run_dir, config: dict):
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))


def test_a_saved_tiny_run_config_resolves_its_asset_paths_and_gains_newer_settings(tmp_path):
    """A stored config names the shipped model through ``${alignkit_asset:...}`` and may
    predate settings such as ``model.lora.load``; both must work in a fresh process, where
    nothing has registered the resolver yet."""
    OmegaConf.clear_resolver("alignkit_asset")
    model = {"name": "tiny", "family": "sd", "init": "pretrained", "resolution": 32}
    model["path"] = "${alignkit_asset:base_model}"
    model["lora"] = {"rank": 8, "alpha": 8}
    _stored_run(tmp_path, {"model": model, "trainer": {"cpu": True}, "eval": {"steps": 7}})
    cfg = read_run_record(tmp_path / ".hydra" / "config.yaml", ["eval.seeds_per_prompt=3"])
    assert cfg.model.path == str(asset_path("base_model"))
    assert cfg.model.lora.load is None and cfg.model.lora.alpha == 8
    assert (cfg.eval.steps, cfg.eval.seeds_per_prompt) == (7, 3)
    assert cfg.trainer.mixed_precision == TrainerConfig().mixed_precision


def test_a_saved_config_with_a_key_this_version_lacks_names_file_and_key(tmp_path):
    _stored_run(tmp_path, {"model": {"name": "tiny"}, "trainer": {"warp_speed": 9}, "eval": {}})
    with pytest.raises(ValueError, match=r"config\.yaml: its trainer settings .*warp_speed"):
        read_run_record(tmp_path / ".hydra" / "config.yaml", [])


def test_the_evaluation_cli_prints_one_error_line_for_a_folder_that_is_no_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluation_main([str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"alignkit: error: {tmp_path} is not a run folder (no .hydra/config.yaml)"]
