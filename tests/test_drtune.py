"""DRTune as an algorithm: reward plumbing, every scheme's loss, and a run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.algorithms import build_algorithm, needs_reward
from alignkit.algorithms.drtune import DRTuneConfig, make_plan, reward_loss
from alignkit.app import run
from alignkit.data.prompts import PromptBatch
from alignkit.rewards import build_reward
from alignkit.rollout import SCHEMES
from tests.helpers import compose_config
from tests.model_helpers import PROMPTS, tiny_backbone


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return tiny_backbone("sd")


def test_reward_loss_is_negative_mean_or_hinge():
    scores = torch.tensor([0.5, 2.5, 1.0])
    assert reward_loss(scores, None).item() == pytest.approx(-4.0 / 3)
    assert reward_loss(scores, 2.0).item() == pytest.approx((1.5 + 0.0 + 1.0) / 3)


def test_drtune_needs_a_differentiable_reward(backbone):
    cfg = DRTuneConfig(name="drtune", steps=2)
    assert needs_reward("drtune") and not needs_reward("dpo")
    with pytest.raises(ValueError, match=r"reward=none.*reward=oracle_diff"):
        build_algorithm(cfg, backbone)
    with pytest.raises(ValueError, match="not differentiable.*reward=oracle_diff"):
        build_algorithm(cfg, backbone, reward=build_reward("oracle"))


def test_bad_scheme_and_settings_fail_when_built(backbone):
    symmetry = build_reward("symmetry")
    with pytest.raises(ValueError, match="algo.scheme='draft'.*drtune, alignprop"):
        build_algorithm(DRTuneConfig(name="drtune", scheme="draft"), backbone, symmetry)
    with pytest.raises(ValueError, match="refl_window=30"):
        build_algorithm(
            DRTuneConfig(name="drtune", scheme="refl", steps=25, refl_window=30), backbone, symmetry
        )


def test_each_scheme_draws_its_own_plan():
    generator = torch.Generator().manual_seed(0)
    plans = {
        scheme: make_plan(
            DRTuneConfig(name="drtune", scheme=scheme, steps=10, train_steps=2, refl_window=3),
            generator,
        )
        for scheme in SCHEMES
    }
    assert plans["drtune"].detach_inputs and plans["drtune"].stop < 10
    assert plans["draft_k"].grad_steps == (8, 9) and not plans["draft_k"].detach_inputs
    assert plans["refl"].stop in (7, 8, 9) and plans["refl"].grad_steps == (plans["refl"].stop,)
    assert plans["draft_lv"].renoise == 2
    assert plans["alignprop"].grad_steps[-1] == 9


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_gives_a_finite_loss_with_gradients(backbone, scheme):
    cfg = DRTuneConfig(
        name="drtune", scheme=scheme, steps=3, train_steps=2, refl_window=2, guidance=2.0
    )
    algorithm = build_algorithm(cfg, backbone, reward=build_reward("symmetry"))
    backbone.unet.zero_grad(set_to_none=True)
    loss, metrics = algorithm.loss(PromptBatch(PROMPTS[:2]), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and metrics["reward"] == pytest.approx(-loss.item())
    grads = [p.grad for p in backbone.trainable_parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_drtune_run_end_to_end(tmp_path):
    cfg = compose_config(
        "algo=drtune",
        "model=tiny_sd",
        "data=tiny_prompts",
        "reward=combo",
        "reward.weights={symmetry:1.0,left_bright:0.5}",
        "algo.steps=3",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
        "trainer.progress_bar=false",
        "eval.enabled=false",
        f"output_dir={tmp_path}",
    )
    result = run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["grad_norm"] > 0 and "reward" in row for row in rows)
    assert result.train.step == 2 and result.train.final_dir.is_dir()


@pytest.mark.parametrize("scheme", ["drtune", "draft_lv"])
def test_sdxl_conditioning_flows_through_the_rollout(scheme):
    torch.manual_seed(0)
    sdxl = tiny_backbone("sdxl")
    cfg = DRTuneConfig(name="drtune", scheme=scheme, steps=2, train_steps=2, guidance=2.0)
    algorithm = build_algorithm(cfg, sdxl, reward=build_reward("left_bright"))
    loss, _ = algorithm.loss(PromptBatch(PROMPTS[:2]), torch.Generator().manual_seed(0))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sdxl.trainable_parameters())
