"""The base side of an evaluation is sampled once per base model and settings, and reused."""

import json

import pytest
import torch

import alignkit.base_samples as base_samples
from alignkit.config import EvalConfig
from alignkit.evaluation import evaluate
from tests.model_helpers import tiny_backbone


@pytest.fixture
def base_sampling_calls(monkeypatch):
    """Count the full base samplings (the probe, one prompt, is not one); start empty."""
    monkeypatch.setattr(base_samples, "_KEPT", {})
    calls = []
    sample = base_samples.generate_images

    def counting(backbone, prompts, seeds, **settings):
        if len(prompts) > 1:
            calls.append(len(prompts))
        return sample(backbone, prompts, seeds, **settings)

    monkeypatch.setattr(base_samples, "generate_images", counting)
    return calls


def _eval_config(tmp_path, reward="oracle") -> EvalConfig:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a white background\na blue square on a black background\n")
    return EvalConfig(prompts=str(prompts), seeds_per_prompt=2, steps=2, rewards=[reward])


def _base_scores(folder, reward="oracle") -> list[float]:
    return json.loads((folder / "eval.json").read_text())["rewards"][reward]["scores"]["base"]


def test_a_sweeps_next_run_reuses_the_base_side(tmp_path, base_sampling_calls):
    backbone = tiny_backbone("sd", resolution=64)
    settings = _eval_config(tmp_path)
    evaluate(backbone, settings, tmp_path / "first")
    torch.manual_seed(0)
    with torch.no_grad():  # the next run's adapter: a different aligned model, the same base
        for parameter in backbone.trainable_parameters():
            parameter.add_(torch.randn_like(parameter))
    evaluate(backbone, settings, tmp_path / "second")
    assert base_sampling_calls == [4]
    base_samples._KEPT.clear()
    evaluate(backbone, settings, tmp_path / "fresh")
    assert base_sampling_calls == [4, 4]
    assert _base_scores(tmp_path / "second") == _base_scores(tmp_path / "fresh")
    assert _base_scores(tmp_path / "second") == _base_scores(tmp_path / "first")


def test_a_changed_base_model_is_sampled_again(tmp_path, base_sampling_calls):
    backbone = tiny_backbone("sd", resolution=64)
    settings = _eval_config(tmp_path, reward="tiny_clip")
    evaluate(backbone, settings, tmp_path / "first")
    with torch.no_grad():
        backbone.unet.conv_in.bias.add_(0.5)
    evaluate(backbone, settings, tmp_path / "second")
    assert base_sampling_calls == [4, 4]
    first, second = (_base_scores(tmp_path / run, "tiny_clip") for run in ("first", "second"))
    assert first != second
