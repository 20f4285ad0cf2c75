import math

import pytest
import torch

from alignkit.losses import (
    cpo_loss,
    diffusion_dpo_loss,
    dpo_logits,
    implicit_accuracy,
    rpo_loss,
    rpo_weights,
)


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


def test_cpo_loss_matches_hand_computation():
    model_w = torch.tensor([0.10, 0.40])
    model_l = torch.tensor([0.30, 0.20])
    # logits = -0.5 * 10 * (w - l): pair 0 -> +1.0, pair 1 -> -1.0
    expected = (_softplus(-1.0) + _softplus(1.0)) / 2
    assert cpo_loss(model_w, model_l, beta=10.0).item() == pytest.approx(expected, rel=1e-6)


def _rpo_case():
    """A 3 x 3 case whose cosines are 0, 1 or equal by construction (see the comments)."""
    # d_w = model_w - ref_w = [0.1, -0.1, 0]; d_l = [0, 0.2, -0.2]
    model_w, ref_w = torch.tensor([0.3, 0.2, 0.5]), torch.tensor([0.2, 0.3, 0.5])
    model_l, ref_l = torch.tensor([0.4, 0.6, 0.1]), torch.tensor([0.4, 0.4, 0.3])
    # normalised: f_w = (1,0), (0,1), (1,1)/sqrt2 ; f_l = (1,0), (0,1), (1,0)
    emb_w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    emb_l = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    return model_w, model_l, ref_w, ref_l, emb_w, emb_l


def _hand_rpo_terms():
    # L[i, j] = -0.5 * 10 * (d_w[i] - d_l[j])
    logits = [[-0.5, 0.5, -1.5], [0.5, 1.5, -0.5], [0.0, 1.0, -1.0]]
    # tau = 0.5: row 0 cos = [1, 0, 1] -> exponents [0, -2, 0]; row 1 cos = [0, 1, 0] ->
    # [-2, 0, -2]; row 2 has the same cosine with every loser -> uniform weights
    e = math.exp(-2.0)
    weights = [
        [1 / (2 + e), e / (2 + e), 1 / (2 + e)],
        [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)],
        [1 / 3, 1 / 3, 1 / 3],
    ]
    return logits, weights


def test_rpo_weights_match_hand_computation():
    *_, emb_w, emb_l = _rpo_case()
    _, weights = _hand_rpo_terms()
    assert rpo_weights(emb_w, emb_l, tau=0.5).tolist() == [
        pytest.approx(row, rel=1e-6) for row in weights
    ]


def test_rpo_loss_outside_matches_hand_computation():
    logits, weights = _hand_rpo_terms()
    expected = (
        sum(sum(weights[i][j] * _softplus(-logits[i][j]) for j in range(3)) for i in range(3)) / 3
    )
    loss = rpo_loss(*_rpo_case(), beta=10.0, tau=0.5, placement="outside")
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_rpo_loss_inside_matches_hand_computation():
    logits, weights = _hand_rpo_terms()
    expected = sum(_softplus(-weights[i][j] * logits[i][j]) for i in range(3) for j in range(3))
    loss = rpo_loss(*_rpo_case(), beta=10.0, tau=0.5, placement="inside")
    assert loss.item() == pytest.approx(expected / 9, rel=1e-6)


def test_rpo_with_tiny_tau_reduces_to_dpo_on_the_diagonal():
    generator = torch.Generator().manual_seed(0)
    errors = [torch.rand(5, generator=generator) for _ in range(4)]
    embeddings = torch.randn(5, 8, generator=generator)
    rpo = rpo_loss(*errors, embeddings, 3 * embeddings, beta=50.0, tau=1e-4)
    dpo = diffusion_dpo_loss(*errors, beta=50.0)
    assert rpo.item() == pytest.approx(dpo.item(), rel=1e-5)
    assert rpo_loss(*errors, embeddings, embeddings, beta=50.0, tau=0.5).item() != pytest.approx(
        dpo.item(), rel=1e-3
    )


@pytest.mark.parametrize("placement", ["outside", "inside"])
def test_rpo_loss_is_invariant_to_permuting_the_batch(placement):
    generator = torch.Generator().manual_seed(1)
    errors = [torch.rand(6, generator=generator) for _ in range(4)]
    emb_w, emb_l = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    order = torch.randperm(6, generator=generator)
    loss = rpo_loss(*errors, emb_w, emb_l, beta=20.0, tau=0.5, placement=placement)
    permuted = [e[order] for e in errors]
    shuffled = rpo_loss(
        *permuted, emb_w[order], emb_l[order], beta=20.0, tau=0.5, placement=placement
    )
    assert shuffled.item() == pytest.approx(loss.item(), rel=1e-6)


def test_rpo_rejects_bad_placement_and_tau():
    args = _rpo_case()
    with pytest.raises(ValueError, match="placement 'middle'.*outside"):
        rpo_loss(*args, beta=1.0, tau=0.5, placement="middle")
    with pytest.raises(ValueError, match="tau=0"):
        rpo_loss(*args, beta=1.0, tau=0.0)
