"""Gradient clipping under a loss scaler (fp16): clip and log the true, unscaled norm.

A CPU GradScaler with a known scale stands in for fp16 training: the loss is multiplied by
the scale before backward exactly as under fp16 autocast on a GPU, which is all the ordering
of unscaling and clipping depends on.
"""

import pytest
import torch
from accelerate import Accelerator

from alignkit.trainer import clip_gradients
from tests.model_helpers import tiny_backbone, tiny_trainer

SCALE = 2.0**10
MAX_NORM = 1e-3


def _total_norm(params) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()


def test_clip_gradients_unscales_before_clipping():
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    scaler.scale(layer(torch.ones(4, 3)).sum()).backward()
    params = list(layer.parameters())
    # d(sum)/dW = 4 for each of the 6 weights, d/db = 4 for each of the 2 biases
    true_norm = (8 * 4.0**2) ** 0.5
    assert _total_norm(params) == pytest.approx(SCALE * true_norm)
    logged = clip_gradients(params, 1.0, scaler, optimizer)
    assert logged == pytest.approx(true_norm)
    assert _total_norm(params) == pytest.approx(1.0, rel=1e-5)
    weight_before = layer.weight.detach().clone()
    scaler.step(optimizer)  # must not unscale a second time
    step = (weight_before - layer.weight.detach()) / 0.1
    assert torch.allclose(step, torch.full_like(step, 1.0 / true_norm * 4.0), rtol=1e-5)


def test_trainer_under_a_loss_scaler_logs_and_clips_the_true_norm(tmp_path):
    plain = tiny_trainer(tiny_backbone(), tmp_path / "plain", max_grad_norm=MAX_NORM)
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    scaled = tiny_trainer(
        tiny_backbone(), tmp_path / "scaled", max_grad_norm=MAX_NORM, accelerator=accelerator
    )
    norms_at_step = []
    scaled.optimizer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: norms_at_step.append(_total_norm(scaled.params))
    )
    expected = plain.train_step()
    logged = scaled.train_step()
    assert expected["grad_norm"] > 10 * MAX_NORM  # so clipping did act
    assert logged["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert norms_at_step == [pytest.approx(MAX_NORM, rel=1e-4)]
    after_plain = plain.backbone.trainable_state_dict()
    after_scaled = scaled.backbone.trainable_state_dict()
    for key, value in after_plain.items():
        assert torch.allclose(value, after_scaled[key], atol=1e-7), key
