"""SPO through the Trainer: a sampling round feeds several micro-batches, and a run resumed
mid-round ends exactly like an uninterrupted one."""

import pytest
import torch
from accelerate import Accelerator

from alignkit.algorithms import build_algorithm
from alignkit.algorithms.spo import SPOConfig, build_step_scorer
from alignkit.checkpoint import list_checkpoints, load_rank_state
from alignkit.config import TrainerConfig
from alignkit.data.prompts import PromptBatches
from alignkit.registry import UnknownNameError
from alignkit.rewards.oracle import OracleReward
from alignkit.tinyworld import render
from alignkit.trainer import Trainer
from tests.model_helpers import PROMPTS, tiny_backbone


def _spo_config(**overrides) -> SPOConfig:
    cfg = SPOConfig(
        name="spo", k=2, threshold=0.0, steps=4, divert_start_step=1, train_batch_size=2,
        spm_base="tiny_random",
    )  # fmt: skip
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _trainer(run_dir, max_steps: int, algo: SPOConfig | None = None) -> Trainer:
    backbone = tiny_backbone()
    algo = algo or _spo_config()
    cfg = TrainerConfig(
        max_steps=max_steps, batch_size=2, lr=1e-3, progress_bar=False, checkpoint_every=1
    )
    config = {"trainer": vars(cfg), "algo": vars(algo), "seed": 0}
    return Trainer(
        cfg,
        backbone,
        build_algorithm(algo, backbone),
        PromptBatches(PROMPTS, cfg.batch_size, seed=0),
        run_dir,
        Accelerator(cpu=True),
        0,
        config,
    )


class _Crash(RuntimeError):
    pass


def test_spo_runs_rounds_over_several_steps_and_resumes_mid_round(tmp_path):
    rounds = []
    uninterrupted = _trainer(tmp_path / "a", 4)
    sample = uninterrupted.algorithm.sampler.sample
    uninterrupted.algorithm.sampler.sample = lambda *a, **kw: rounds.append(1) or sample(*a, **kw)
    uninterrupted.fit([])
    assert 1 <= len(rounds) < 4  # one round feeds more than one optimizer step
    expected = uninterrupted.backbone.trainable_state_dict()

    crashing = _trainer(tmp_path / "b", 4)
    real_batch = crashing.batches.batch

    def batch_then_crash(index):
        if index == 3:  # step 4's prompts: step 3 ended with transitions still waiting
            raise _Crash
        return real_batch(index)

    crashing.batches.batch = batch_then_crash
    with pytest.raises(_Crash):
        crashing.fit([])
    saved = list_checkpoints(tmp_path / "b" / "checkpoints")[-1]
    own = load_rank_state(saved, 0, restore_rng=False)
    assert own.algorithm  # transitions wait across the step, saved with this process's state

    resumed = _trainer(tmp_path / "b", 4)
    assert resumed.resume() == 3
    assert len(resumed.algorithm.waiting) > 0
    resumed.fit([])
    got = resumed.backbone.trainable_state_dict()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_spo_loss_updates_the_lora_and_reports_ratios():
    backbone = tiny_backbone()
    algorithm = build_algorithm(_spo_config(), backbone)
    batch = PromptBatches(PROMPTS, 2, seed=0).batch(0)
    loss, metrics = algorithm.loss(batch, torch.Generator().manual_seed(0))
    assert metrics["pairs"] > 0
    # policy == reference at the start: every ratio is one and the loss is log 2
    assert abs(metrics["ratio_w"] - 1) < 1e-5 and abs(metrics["ratio_l"] - 1) < 1e-5
    assert abs(loss.item() - torch.log(torch.tensor(2.0)).item()) < 1e-5
    loss.backward()
    grads = [p.grad for p in backbone.trainable_parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_a_last_step_without_noise_never_enters_a_pair():
    # the tiny scheduler lands on alpha = 1 (set_alpha_to_one): the last step has sigma = 0 and
    # no log-probability. Chunks (1, 2) and (3, 4): the last chunk separates at step 3, and
    # its step 4 must stay out of the pairs, or the loss is NaN.
    backbone = tiny_backbone()
    algo = _spo_config(steps=5, num_inner_steps=1, threshold=-1.0, train_batch_size=64)
    algorithm = build_algorithm(algo, backbone)
    schedule = algorithm.sampler.schedule
    assert schedule.alpha_prev[-1] == 1
    batch = PromptBatches(PROMPTS, 2, seed=0).batch(0)
    loss, metrics = algorithm.loss(batch, torch.Generator().manual_seed(0))
    assert metrics["pairs"] == 2 * 3  # steps 1, 2 and 3 for each prompt
    assert torch.isfinite(loss)


def test_spo_refuses_a_deterministic_sampler():
    with pytest.raises(ValueError, match="eta"):
        build_algorithm(_spo_config(eta=0.0), tiny_backbone())


def test_a_reward_step_scorer_is_the_reward_times_its_logit_scale_and_blind_to_t():
    prompt = "a red square on a white background"
    good = torch.from_numpy(render(prompt, 0)).permute(2, 0, 1).float()[None] / 255
    blank = torch.ones_like(good)
    images = torch.cat([good, blank])
    scorer = build_step_scorer(_spo_config(spm_base="reward:oracle"), torch.device("cpu"))
    early = scorer(images, [prompt, prompt], torch.tensor([900, 900]))
    late = scorer(images, [prompt, prompt], torch.tensor([0, 0]))
    torch.testing.assert_close(early, late)
    torch.testing.assert_close(early, 10 * OracleReward()(images, [prompt, prompt]))
    assert early[0] > early[1] + 1.0
    brighter = build_step_scorer(
        _spo_config(spm_base="reward:left_bright", reward_logit_scale=100.0), torch.device("cpu")
    )
    left_lit = torch.zeros(1, 3, 8, 8)
    left_lit[..., :4] = 0.5
    torch.testing.assert_close(
        brighter(left_lit, [prompt], torch.tensor([500])), torch.tensor([50.0])
    )


def test_an_unknown_reward_step_scorer_is_named_in_the_error():
    with pytest.raises(UnknownNameError, match="no_such_reward"):
        build_step_scorer(_spo_config(spm_base="reward:no_such_reward"), torch.device("cpu"))
