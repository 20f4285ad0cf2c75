"""The offline default job, the shipped tiny-world artifacts, and a sweep with its report."""

import json
import subprocess
import sys

import torch

from alignkit.data import build_batches
from alignkit.rewards import build_reward
from alignkit.tinyworld import heldout_prompts, render
from alignkit.tinyworld.assets import asset_path
from tests.helpers import FakeEncoder, compose_config


def test_the_default_job_is_dpo_on_the_tiny_worlds_model_and_pairs():
    cfg = compose_config()
    assert (cfg.model.name, cfg.data.name, cfg.algo.name) == ("tiny", "tiny_pairs", "dpo")
    assert cfg.model.path == asset_path("base_model") and cfg.data.path == asset_path("pairs")
    batches = build_batches(cfg.data, FakeEncoder(), resolution=32, batch_size=8, seed=0)
    assert batches.num_pairs >= 400  # 616 shipped pairs less 55 ties (build_report.json)


def test_the_shipped_renderer_pairs_load():
    cfg = compose_config("data=tiny_render_pairs")
    assert cfg.data.path == asset_path("render_pairs")
    batches = build_batches(cfg.data, FakeEncoder(), resolution=32, batch_size=8, seed=0)
    assert batches.num_pairs >= 250  # 308 shipped pairs, about one in nine a tie


def test_the_default_command_prints_the_table_and_writes_the_grid(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignkit",
            f"output_dir={tmp_path}",
            "trainer.max_steps=2",
            "trainer.progress_bar=false",
            "eval.seeds_per_prompt=1",
            "eval.steps=2",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "| oracle |" in result.stdout and "| tiny_pickscore |" in result.stdout
    assert f"image grid (base | aligned, same seeds): {tmp_path / 'eval_grid.png'}" in result.stdout
    assert (tmp_path / "eval_grid.png").is_file()
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["samples"] == len(heldout_prompts())


def test_the_shipped_clip_scores_a_render_highest_with_its_own_colour_and_background():
    clip = build_reward("tiny_clip")
    prompts = heldout_prompts()
    images = torch.stack(
        [torch.from_numpy(render(prompt, seed=5_000_000 + i)) for i, prompt in enumerate(prompts)]
    )
    images = images.permute(0, 3, 1, 2).float() / 255
    scores = torch.stack([clip(images, [prompt] * len(prompts)) for prompt in prompts], dim=1)
    assert (scores.argmax(dim=1) == torch.arange(len(prompts))).float().mean() >= 0.9


def test_a_two_run_sweep_and_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignkit",
            "-m",
            "algo=dpo,sft",
            "trainer.max_steps=2",
            "trainer.progress_bar=false",
            "eval.enabled=true",
            "eval.prompts=tiny_heldout",
            "eval.seeds_per_prompt=1",
            "eval.steps=2",
            "eval.rewards=[oracle]",
            "eval.grid_prompts=2",
            "eval.grid_seeds=1",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(next(sweep.glob("*/eval.json")).read_text())
    assert evaluation["samples"] == len(heldout_prompts())
    report = subprocess.run(
        [sys.executable, "-m", "alignkit.report", str(sweep)], capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr
    table = (sweep / "report" / "report.md").read_text()
    assert "algo=dpo (n=1)" in table and "algo=sft (n=1)" in table
    assert "oracle win rate" in table and "train s" in table
    assert "## Methods ranked by oracle" in table
    assert " | 19 (19) | " in table  # dpo and sft paired on every held-out prompt's seed 0
    assert len(list((sweep / "report").glob("grid_*.png"))) == 2
