import math

import pytest
import torch

from alignkit.losses import diffusion_dpo_loss, dpo_logits, implicit_accuracy


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_dpo_loss_matches_hand_computation():
    model_w = torch.tensor([0.10, 0.30])
    model_l = torch.tensor([0.20, 0.10])
    ref_w = torch.tensor([0.15, 0.20])
    ref_l = torch.tensor([0.10, 0.30])
    # pair 0: d_w = -0.05, d_l = +0.10 -> inside = -0.5 * 10 * (-0.15) = +0.75
    # pair 1: d_w = +0.10, d_l = -0.20 -> inside = -0.5 * 10 * (+0.30) = -1.50
    expected = (_softplus(-0.75) + _softplus(1.50)) / 2
    loss = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=10.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    logits = dpo_logits(model_w, model_l, ref_w, ref_l, beta=10.0)
    assert logits.tolist() == pytest.approx([0.75, -1.5], rel=1e-6)


def test_dpo_loss_is_log2_when_policy_equals_reference():
    errors_w, errors_l = torch.rand(7), torch.rand(7)
    loss = diffusion_dpo_loss(errors_w, errors_l, errors_w, errors_l, beta=5000.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_dpo_loss_falls_when_the_winner_error_drops_more():
    ref_w, ref_l = torch.full((4,), 0.5), torch.full((4,), 0.5)
    worse = diffusion_dpo_loss(ref_w + 0.01, ref_l, ref_w, ref_l, beta=100.0)
    better = diffusion_dpo_loss(ref_w - 0.01, ref_l, ref_w, ref_l, beta=100.0)
    assert better < math.log(2) < worse


def test_dpo_loss_computes_in_float32_from_half_inputs():
    half = torch.tensor([0.1, 0.2], dtype=torch.float16)
    loss = diffusion_dpo_loss(half, half.flip(0), half, half, beta=5000.0)
    assert loss.dtype == torch.float32


def test_implicit_accuracy_counts_ties_as_half():
    assert implicit_accuracy(torch.tensor([1.0, -2.0, 0.0, 3.0])).item() == pytest.approx(0.625)
