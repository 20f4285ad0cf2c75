"""The shipped tiny-world model: it loads in diffusers, its images show what was asked, and
DPO on its shipped pairs measurably raises the judge's score on held-out prompts."""

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from alignkit.app import run
from alignkit.tinyworld import fidelity_ok, heldout_prompts
from alignkit.tinyworld.assets import asset_path
from alignkit.tinyworld.judge import judge_breakdown
from tests.helpers import compose_config


def test_the_shipped_model_loads_in_diffusers_and_draws_what_was_asked():
    pipeline = StableDiffusionPipeline.from_pretrained(asset_path("base_model"))  # as from the hub
    assert {m.dtype for m in (pipeline.unet, pipeline.vae, pipeline.text_encoder)} == {
        torch.float32
    }
    pipeline.set_progress_bar_config(disable=True)
    prompts = heldout_prompts()
    generators = [torch.Generator().manual_seed(seed) for seed in range(len(prompts))]
    images = pipeline(
        prompts,
        height=32,
        width=32,
        num_inference_steps=20,
        guidance_scale=3.0,
        generator=generators,
        output_type="np",
    ).images
    assert images.shape == (len(prompts), 32, 32, 3)
    images = (images * 255).round().astype(np.uint8)
    terms = judge_breakdown(images, prompts)
    assert terms["colour"].mean() > 0.9 and terms["background"].mean() > 0.9  # measured 0.99+
    # shape and colour together: 14 of 19 here, 73% over 8 seeds in build_report.json (the
    # bar is 70%: docs/tiny_world.md); the model built on rotated objects got 5 of 19 here
    assert fidelity_ok(images, prompts).sum() >= 10


def test_dpo_on_the_shipped_pairs_raises_the_judge_score_on_heldout_prompts(tmp_path):
    cfg = compose_config(
        f"output_dir={tmp_path}",
        "trainer.max_steps=200",
        "trainer.lr=4e-4",
        "trainer.checkpoint_every=1000",
        "trainer.progress_bar=false",
        "eval.seeds_per_prompt=2",
        "eval.rewards=[oracle]",
    )
    assert (cfg.model.name, cfg.data.name, cfg.algo.name) == ("tiny", "tiny_pairs", "dpo")
    result = run(cfg)
    judge = result.evaluation["rewards"]["oracle"]
    # measured: 0.2647 -> 0.2831 (+6.9%; 120 steps at lr 1e-3 gave +0.8%; the 400-step default
    # job: 65.8% win rate, README). The win rate is no test here: 38 comparisons give a 95%
    # interval about 30 points wide.
    assert judge["aligned"] > 1.02 * judge["base"]
    assert (tmp_path / "eval_grid.png").exists()
