import torch

from alignkit.sampling import ddim_sigma, sample_latents, split_prediction
from tests.model_helpers import diffusers_ddim_latents, tiny_backbone


def test_ddim_sampler_matches_diffusers_ddim_pipeline():
    backbone = tiny_backbone()
    prompts, seeds = ["a red circle", "a blue square"], [3, 4]
    ours = sample_latents(backbone, prompts, seeds, steps=5, guidance=4.0)
    theirs = diffusers_ddim_latents(backbone, prompts, seeds, steps=5, guidance=4.0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_v_prediction_split_recovers_x0_and_eps():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    a = torch.tensor([0.9, 0.5, 0.1])
    av = a.view(-1, 1, 1, 1)
    x_t = av.sqrt() * x0 + (1 - av).sqrt() * eps
    v = av.sqrt() * eps - (1 - av).sqrt() * x0
    got_x0, got_eps = split_prediction("v_prediction", v, x_t, a)
    torch.testing.assert_close(got_x0, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_eps, eps, atol=1e-5, rtol=1e-5)


def test_ddim_sigma_is_zero_for_eta_zero_and_matches_the_formula():
    a_t, a_prev = torch.tensor([0.3]), torch.tensor([0.6])
    assert ddim_sigma(a_t, a_prev, 0.0).item() == 0.0
    expected = ((1 - 0.6) / (1 - 0.3)) ** 0.5 * (1 - 0.3 / 0.6) ** 0.5
    assert abs(ddim_sigma(a_t, a_prev, 1.0).item() - expected) < 1e-6
