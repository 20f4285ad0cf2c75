"""trainer.optimizer: 8-bit AdamW's clear refusal here, and an optimizer named by its class."""

import sys
import types

import pytest
import torch

from alignkit.config import TrainerConfig
from alignkit.optim import build_optimizer
from tests.helpers import compose_config
from tests.model_helpers import tiny_backbone, tiny_trainer


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.tensor([1.0, -2.0]))]


def _custom(target="torch.optim.SGD", kwargs=None, **settings) -> TrainerConfig:
    return TrainerConfig(
        optimizer="custom", optimizer_target=target, optimizer_kwargs=kwargs, **settings
    )


def test_adamw8bit_without_bitsandbytes_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ValueError, match=r"`pip install bitsandbytes` on a machine with CUDA"):
        build_optimizer(TrainerConfig(optimizer="adamw8bit"), _params())


def test_adamw8bit_with_weights_off_the_gpu_says_it_needs_cuda(monkeypatch):
    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=lambda *args, **kwargs: pytest.fail("built"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    with pytest.raises(ValueError, match=r"weights on a CUDA GPU \(they are on cpu\)"):
        build_optimizer(TrainerConfig(optimizer="adamw8bit"), _params())


def test_custom_sgd_follows_the_hand_computed_momentum_update():
    params = _params()
    optimizer = build_optimizer(
        _custom(kwargs={"momentum": 0.5}, lr=0.1, weight_decay=0.25), params
    )
    gradients = [torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 0.0])]
    for gradient in gradients:
        params[0].grad = gradient.clone()
        optimizer.step()
    # step 1: g' = g + 0.25 p = (2.25, 3.5); buf = g'; p = (1, -2) - 0.1 buf = (0.775, -2.35)
    # step 2: g' = (-1, 0) + 0.25 p = (-0.80625, -0.5875); buf = 0.5 buf + g' = (0.31875, 1.1625)
    #         p = (0.775, -2.35) - 0.1 buf = (0.743125, -2.46625)
    torch.testing.assert_close(params[0].detach(), torch.tensor([0.743125, -2.46625]))


def test_custom_optimizer_from_the_command_line_syntax():
    cfg = compose_config(
        "trainer.optimizer=custom",
        "trainer.optimizer_target=torch.optim.SGD",
        "trainer.optimizer_kwargs={momentum: 0.9, nesterov: true}",
        "trainer.lr=0.05",
    )
    optimizer = build_optimizer(cfg.trainer, _params())
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.05, 0.9, True)
    assert group["weight_decay"] == cfg.trainer.weight_decay


def test_custom_optimizer_run_resumes_exactly(tmp_path):
    settings = {"optimizer": "custom", "optimizer_target": "torch.optim.SGD"}
    settings |= {"optimizer_kwargs": {"momentum": 0.9}, "checkpoint_every": 2}

    def fit(run_dir, steps):
        backbone = tiny_backbone()
        trainer = tiny_trainer(backbone, run_dir, max_steps=steps, **settings)
        trainer.resume()
        trainer.fit([])
        return backbone.trainable_state_dict(), trainer.optimizer

    uninterrupted, optimizer = fit(tmp_path / "a", 4)
    assert type(optimizer.optimizer) is torch.optim.SGD  # inside accelerate's wrapper
    fit(tmp_path / "b", 2)
    resumed, _ = fit(tmp_path / "b", 4)
    assert uninterrupted.keys() == resumed.keys()
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], resumed[key]), key


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (_custom("torch.nn.Linear"), r"optimizer_target='torch.nn.Linear' names a class, not"),
        (_custom("torch.optim.SGDX"), r"'torch.optim.SGDX' names nothing importable"),
        (_custom("torch.optim"), r"'torch.optim' names a module, not a torch.optim.Optimizer"),
        (_custom(None), r"optimizer=custom needs trainer.optimizer_target"),
        (_custom(kwargs={"momentom": 0.9}), r"takes no argument\(s\) momentom; it takes: damp"),
        (_custom(kwargs={"lr": 0.1}), r"may not set lr: lr comes from trainer.lr"),
        (_custom(kwargs={"momentum": -1.0}), r"rejected .*'momentum': -1.0.*Invalid momentum"),
        (_custom(kwargs=[0.9]), r"trainer.optimizer_kwargs=\[0.9\] is not a dict"),
        (TrainerConfig(optimizer_target="torch.optim.SGD"), r"set trainer.optimizer=custom"),
        (TrainerConfig(optimizer="sgd"), r"unknown trainer.optimizer='sgd'; choose one of adamw"),
    ],
)
def test_bad_optimizer_settings_are_clear_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(cfg, _params())
