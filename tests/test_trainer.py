import json

import pytest
import torch

from alignkit.checkpoint import list_checkpoints
from alignkit.sinks import JsonlSink
from alignkit.trainer import ConfigMismatchError, config_differences
from tests.model_helpers import tiny_backbone, tiny_trainer


def _fit(run_dir, max_steps, **overrides):
    backbone = tiny_backbone()
    trainer = tiny_trainer(backbone, run_dir, max_steps=max_steps, **overrides)
    trainer.resume()
    sink = JsonlSink(run_dir / "metrics.jsonl", trainer.step)
    trainer.fit([sink])
    sink.close()
    return backbone.trainable_state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _Crash(RuntimeError):
    pass


def test_run_resumed_after_a_crash_ends_with_the_same_weights(tmp_path):
    settings = {"checkpoint_every": 2, "grad_accum": 2, "lr_schedule": "cosine", "warmup_steps": 1}
    uninterrupted = _fit(tmp_path / "a", 5, **settings)

    crashing = tiny_trainer(tiny_backbone(), tmp_path / "b", max_steps=5, **settings)
    real_batch = crashing.batches.batch

    def batch_then_crash(index):
        if index == 6:  # the first micro-batch of step 4
            raise _Crash
        return real_batch(index)

    crashing.batches.batch = batch_then_crash
    with pytest.raises(_Crash):
        crashing.fit([JsonlSink(tmp_path / "b" / "metrics.jsonl")])
    resumed = _fit(tmp_path / "b", 5, **settings)
    _assert_same_weights(uninterrupted, resumed)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4, 5]


def test_interrupt_mid_step_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    uninterrupted = _fit(tmp_path / "a", 4, grad_accum=2, checkpoint_every=100)

    backbone = tiny_backbone()
    trainer = tiny_trainer(
        backbone, tmp_path / "b", max_steps=4, grad_accum=2, checkpoint_every=100
    )
    original_loss = trainer.algorithm.loss
    calls = {"n": 0}

    def interrupted_loss(batch, generator):
        calls["n"] += 1
        if calls["n"] == 6:  # the second micro-batch of step 3
            raise KeyboardInterrupt
        return original_loss(batch, generator)

    trainer.algorithm.loss = interrupted_loss
    with pytest.raises(KeyboardInterrupt):
        trainer.fit([])
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_00000002"]
    _assert_same_weights(uninterrupted, _fit(tmp_path / "b", 4, grad_accum=2))


def test_checkpoints_are_pruned_and_incomplete_ones_ignored(tmp_path):
    _fit(tmp_path, 6, checkpoint_every=1, keep_checkpoints=2)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_00000005", "step_00000006"]
    broken = tmp_path / "checkpoints" / "step_00000009"
    broken.mkdir()  # a folder without state.json, as a crash mid-write would leave
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == "step_00000006"
    assert (tmp_path / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_resume_with_changed_settings_is_refused(tmp_path):
    _fit(tmp_path, 2, checkpoint_every=1)
    trainer = tiny_trainer(tiny_backbone(), tmp_path, max_steps=4, lr=5e-4)
    with pytest.raises(ConfigMismatchError, match=r"trainer.lr: 0.001 -> 0.0005"):
        trainer.resume()


def test_config_differences_ignore_what_a_resume_may_change():
    saved = {"trainer": {"max_steps": 10, "lr": 1.0}, "logger": {"name": "jsonl"}}
    current = {"trainer": {"max_steps": 20, "lr": 1.0}, "logger": {"name": "wandb"}}
    assert config_differences(saved, current) == []
    current["trainer"]["lr"] = 2.0
    assert config_differences(saved, current) == ["trainer.lr: 1.0 -> 2.0"]


def test_dpo_loss_goes_down_on_repeated_pairs(tmp_path):
    backbone = tiny_backbone()
    trainer = tiny_trainer(backbone, tmp_path, lr=3e-3, max_grad_norm=0.0)
    fixed = trainer.batches.batch(0)
    trainer.batches.batch = lambda index: fixed
    losses = []
    for _ in range(12):
        trainer.generator.manual_seed(0)  # the same timesteps and noise: one fixed objective
        losses.append(trainer.train_step()["loss"])
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_non_finite_loss_is_a_clear_error(tmp_path):
    trainer = tiny_trainer(tiny_backbone(), tmp_path)
    trainer.algorithm.loss = lambda batch, generator: (torch.tensor(float("nan")), {})
    with pytest.raises(FloatingPointError, match="lower trainer.lr"):
        trainer.train_step()
