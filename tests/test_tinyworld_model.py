"""The shipped tiny world: its model loads through diffusers and draws what prompts ask for;
the default job trains, evaluates and really aligns; a two-run sweep makes a report."""

import json
import subprocess
import sys

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from alignkit.app import run
from alignkit.config import asset_path
from alignkit.rewards import build_reward
from alignkit.tinyworld import fidelity_ok, heldout_prompts, render
from tests.helpers import compose_config


def test_the_shipped_model_loads_in_diffusers_and_draws_the_prompted_shape_and_colour():
    pipeline = StableDiffusionPipeline.from_pretrained(
        asset_path("base_model"), torch_dtype=torch.float32
    )
    prompts = heldout_prompts()[:12]
    images = pipeline(
        prompts,
        height=32,
        width=32,
        num_inference_steps=20,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
        output_type="np",
    ).images
    pixels = (images * 255).round().astype(np.uint8)
    assert fidelity_ok(pixels, prompts).mean() >= 0.5


def test_the_default_job_is_the_tiny_world():
    cfg = compose_config()
    assert (cfg.model.name, cfg.data.name, cfg.algo.name) == ("tiny", "tiny_pairs", "dpo")
    assert cfg.model.path == asset_path("base_model")


def test_dpo_raises_the_judges_score_on_heldout_prompts(tmp_path):
    cfg = compose_config(
        f"output_dir={tmp_path}",
        "trainer.progress_bar=false",
        "eval.seeds_per_prompt=2",
        "eval.rewards=[oracle]",
    )
    result = run(cfg)
    oracle = result.evaluation["rewards"]["oracle"]
    assert oracle["aligned"] > oracle["base"]
    assert oracle["win_rate"]["rate"] > 0.5
    assert json.loads((tmp_path / "eval.json").read_text()) == result.evaluation
    assert (tmp_path / "eval_grid.png").is_file()


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
            "eval.seeds_per_prompt=1",
            "eval.steps=4",
            "eval.grid_prompts=2",
            "eval.grid_seeds=1",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = subprocess.run(
        [sys.executable, "-m", "alignkit.report", str(sweep)], capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr
    table = (sweep / "report" / "report.md").read_text()
    assert "algo=dpo (n=1)" in table and "algo=sft (n=1)" in table
    assert "oracle win rate" in table
    assert len(list((sweep / "report").glob("grid_*.png"))) == 2


def test_the_shipped_clip_scores_a_render_highest_with_its_own_colour_and_background():
    clip = build_reward("tiny_clip")
    prompts = heldout_prompts()
    images = torch.stack(
        [torch.from_numpy(render(prompt, seed=5_000_000 + i)) for i, prompt in enumerate(prompts)]
    )
    images = images.permute(0, 3, 1, 2).float() / 255
    scores = torch.stack([clip(images, [prompt] * len(prompts)) for prompt in prompts], dim=1)
    assert (scores.argmax(dim=1) == torch.arange(len(prompts))).float().mean() >= 0.9
