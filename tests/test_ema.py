import dataclasses

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from alignkit import app
from alignkit.checkpoint import list_checkpoints, load_checkpoint
from alignkit.config import ModelConfig
from alignkit.ema import decay_at
from alignkit.sinks import JsonlSink
from tests.model_helpers import tiny_backbone, tiny_trainer


def _trainable(backbone) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone() for name, p in backbone.unet.named_parameters() if p.requires_grad
    }


def _fit(run_dir, max_steps, **overrides):
    backbone = tiny_backbone()
    trainer = tiny_trainer(backbone, run_dir, max_steps=max_steps, ema=True, **overrides)
    trainer.resume()
    sink = JsonlSink(run_dir / "metrics.jsonl", trainer.step)
    trainer.fit([sink])
    sink.close()
    return backbone


def test_decay_ramps_up_then_stays_at_the_configured_value():
    assert decay_at(0, 0.9999) == pytest.approx(0.1)  # 1 / 10
    assert decay_at(1, 0.9999) == pytest.approx(2 / 11)
    assert decay_at(8, 0.5) == pytest.approx(0.5)  # 9 / 18 meets the cap
    assert decay_at(90, 0.9) == pytest.approx(0.9)  # 91 / 100 is above it


def test_ema_after_four_steps_is_the_hand_computed_average_of_the_weights(tmp_path):
    backbone = tiny_backbone()
    trainer = tiny_trainer(backbone, tmp_path, max_steps=4, ema=True, ema_decay=0.25)
    recorded = [_trainable(backbone)]
    for _ in range(4):
        trainer.train_step()
        recorded.append(_trainable(backbone))
    # decay per step: the ramp 1/10, 2/11, 3/12, then 4/13 capped at ema_decay = 0.25
    decays = [0.1, 2 / 11, 0.25, 0.25]
    expected = recorded[0]
    for decay, weights in zip(decays, recorded[1:]):
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    average = trainer.ema.state_dict()
    assert average.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(average[key], expected[key], rtol=1e-5, atol=1e-7)
    moved = max((average[k] - recorded[-1][k]).abs().max().item() for k in expected)
    assert moved > 1e-4  # the average lags the weights: the comparison above is not trivial


def test_resumed_run_keeps_the_ema_exact(tmp_path):
    _fit(tmp_path / "a", 4, checkpoint_every=2)
    _fit(tmp_path / "b", 2, checkpoint_every=2)
    _fit(tmp_path / "b", 4, checkpoint_every=2)
    uninterrupted = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[-1])
    resumed = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[-1])
    assert resumed.step == uninterrupted.step == 4
    assert uninterrupted.ema.keys() == resumed.ema.keys() and uninterrupted.ema
    for key in uninterrupted.ema:
        assert torch.equal(uninterrupted.ema[key], resumed.ema[key]), key


def test_final_export_and_trained_model_hold_the_ema(tmp_path):
    backbone = _fit(tmp_path, 3, checkpoint_every=3)
    checkpoint = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])
    exported = load_file(tmp_path / "final" / "pytorch_lora_weights.safetensors")
    raw = checkpoint.trainable
    for name, average in checkpoint.ema.items():
        # what the evaluation after training samples from
        assert torch.equal(dict(backbone.unet.named_parameters())[name].detach(), average)
        layer, matrix = name.split(".lora_")
        side = {"A.default.weight": "down", "B.default.weight": "up"}[matrix]
        assert torch.equal(exported[f"unet.{layer}.lora.{side}.weight"], average), name
        assert not torch.equal(raw[f"{layer}.lora_{matrix.replace('.default', '')}"], average)


def test_evaluating_a_saved_run_uses_its_ema(tmp_path, monkeypatch):
    _fit(tmp_path, 2, checkpoint_every=2)
    model = dataclasses.asdict(ModelConfig(name="tiny_sd", family="sd", init="random"))
    model["resolution"] = 32
    config = {"model": model, "trainer": {"mixed_precision": "no", "cpu": True}, "eval": {}}
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(config), tmp_path / ".hydra" / "config.yaml")
    seen = {}
    record = lambda backbone, cfg, out: seen.update(_trainable(backbone))  # noqa: E731
    monkeypatch.setattr(app, "evaluate", record)
    app.evaluate_saved_run(tmp_path, [])
    average = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1]).ema
    assert seen.keys() == average.keys()
    for key in average:
        assert torch.equal(seen[key], average[key]), key


def test_decay_outside_zero_one_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.ema_decay=1.0 must be in \[0, 1\)"):
        tiny_trainer(tiny_backbone(), tmp_path, ema=True, ema_decay=1.0)
