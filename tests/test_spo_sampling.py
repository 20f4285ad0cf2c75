"""SPO's pieces: the DDIM step log-probability, the pool sampler and resampler, the loss."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from alignkit.losses import spo_loss
from alignkit.pool_sampler import (
    PoolConfig,
    PoolSampler,
    Transitions,
    even_share,
    redistribute,
    resample,
    select_pairs,
)
from alignkit.sampling import (
    ddim_sigma,
    ddim_step,
    ddim_step_log_prob,
    initial_noise,
    sample_with_log_probs,
)
from tests.model_helpers import diffusers_ddim_latents, tiny_backbone

PROMPTS = ["a red circle", "a blue square"]


def _pool_backbone(family: str = "sd"):
    """A tiny backbone whose "decoder" is the identity: the random tiny VAE saturates its
    images, which would make every stand-in score tie."""
    backbone = tiny_backbone(family)
    backbone.decode_latents = lambda latents: latents.float()
    return backbone


def pool_final_sigma(backbone, cfg) -> float:
    schedule = PoolSampler(backbone, None, cfg).schedule
    return ddim_sigma(schedule.alpha_t[-1], schedule.alpha_prev[-1], cfg.eta).item()


def _pattern(images):
    """A fixed random linear read-out of the images."""
    weights = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(0))
    return (images * weights).mean(dim=(1, 2, 3))


def _brightness_scorer(scale: float):
    """A stand-in step-aware preference model: a pixel read-out, ``scale`` sets the spread."""
    seen = []

    def score(images, prompts, timesteps):
        assert len(images) == len(prompts) == len(timesteps)
        seen.append(timesteps.clone())
        return scale * _pattern(images)

    score.seen = seen
    return score


def test_log_prob_matches_a_hand_computation():
    x_prev = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 0.0]]]])  # [2, 1, 1, 2]
    x0 = torch.tensor([[[[0.2, 0.1]]], [[[1.0, -0.5]]]])
    eps = torch.tensor([[[[1.0, -1.0]]], [[[0.3, 0.4]]]])
    a_t, a_prev, eta = torch.tensor([0.5, 0.3]), torch.tensor([0.8, 0.6]), 0.7
    expected = []
    for b in range(2):
        at, ap = a_t[b].item(), a_prev[b].item()
        sigma = eta * math.sqrt((1 - ap) / (1 - at)) * math.sqrt(1 - at / ap)
        terms = []
        for j in range(2):
            mu = (
                math.sqrt(ap) * x0[b, 0, 0, j].item()
                + math.sqrt(1 - ap - sigma**2) * eps[b, 0, 0, j].item()
            )
            diff = x_prev[b, 0, 0, j].item() - mu
            terms.append(
                -(diff**2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
            )
        expected.append(sum(terms) / 2)
    got = ddim_step_log_prob(x_prev, x0, eps, a_t, a_prev, eta)
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_log_prob_refuses_a_deterministic_step():
    x = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="eta=0"):
        ddim_step_log_prob(x, x, x, torch.tensor(0.5), torch.tensor(0.8), 0.0)


def test_stochastic_step_matches_diffusers_ddim_scheduler_step():
    backbone = tiny_backbone()
    scheduler = DDIMScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    x_t, eps, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    theirs = scheduler.step(eps, t, x_t, eta=1.0, variance_noise=noise).prev_sample
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.alphas_cumprod[t - 100]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    ours = ddim_step(x_t, x0, eps, a_t, a_prev, 1.0, noise=noise)
    torch.testing.assert_close(ours.x_prev, theirs, atol=1e-5, rtol=1e-5)
    expected = ddim_step_log_prob(theirs, x0, eps, a_t.repeat(3), a_prev.repeat(3), 1.0)
    torch.testing.assert_close(ours.log_prob, expected)


def test_log_prob_sampler_and_pool_sampler_match_diffusers_at_eta_zero():
    backbone = tiny_backbone()
    seeds = [3, 4]
    theirs = diffusers_ddim_latents(backbone, PROMPTS, seeds, steps=5, guidance=4.0)
    trajectory = sample_with_log_probs(
        backbone, PROMPTS, seeds, torch.Generator(), steps=5, guidance=4.0, eta=0.0
    )
    torch.testing.assert_close(trajectory.latents[:, -1], theirs, atol=1e-5, rtol=1e-4)
    cfg = PoolConfig(k=1, threshold=0.0, steps=5, guidance=4.0, eta=0.0, divert_start_step=0)
    pool = PoolSampler(backbone, _brightness_scorer(1.0), cfg)
    result = pool.sample(PROMPTS, torch.Generator(), latents=initial_noise(seeds, (4, 8, 8)))
    torch.testing.assert_close(result.final_latents, theirs, atol=1e-5, rtol=1e-4)
    assert len(result.transitions) == 0  # k = 1: best and worst coincide, no pair


def test_pool_makes_exactly_one_batched_unet_call_per_denoising_step():
    backbone = _pool_backbone()
    calls = []
    unet = backbone.unet_forward

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return unet(x, *args, **kwargs)

    backbone.unet_forward = counting
    cfg = PoolConfig(k=3, threshold=0.0, steps=6, guidance=5.0, eta=1.0, divert_start_step=2)
    result = PoolSampler(backbone, _brightness_scorer(1e4), cfg).sample(
        PROMPTS, torch.Generator().manual_seed(0)
    )
    batch, k = len(PROMPTS), cfg.k
    # steps 0, 1 and the shared x_t of step 2: plain CFG batches; steps 3..5: all candidates
    assert calls == [2 * batch] * 3 + [2 * batch * k] * 3
    assert result.unet_calls == cfg.steps
    # a large score spread keeps every pair: one per prompt per pooled step, except the last
    # step, which lands on alpha = 1 with sigma = 0 here (set_alpha_to_one): its candidates tie
    assert pool_final_sigma(backbone, cfg) == 0
    assert len(result.transitions) == batch * (cfg.steps - cfg.divert_start_step - 1)


def test_candidates_are_scored_at_their_own_timestep_and_the_last_at_zero():
    backbone = tiny_backbone()
    scorer = _brightness_scorer(1.0)
    cfg = PoolConfig(k=2, threshold=0.0, steps=4, guidance=5.0, eta=1.0, divert_start_step=1)
    pool = PoolSampler(backbone, scorer, cfg)
    pool.sample(PROMPTS, torch.Generator().manual_seed(0))
    scored_at = [int(t[0]) for t in scorer.seen]
    assert scored_at == [int(t) for t in pool.schedule.timesteps[2:]] + [0]


def test_resampler_draws_candidates_uniformly():
    k, draws = 4, 40_000
    counts = torch.bincount(resample(k, draws, torch.Generator().manual_seed(7)), minlength=k)
    expected = draws / k
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_pairs_below_the_threshold_are_dropped():
    # softmax gaps: prompt 0: tanh(0.5) = 0.46, prompt 1: tanh(0.1) = 0.10, prompt 2: 0
    scores = torch.tensor([[1.0, 0.2, 3.0], [0.0, 0.0, 3.0], [0.5, 0.1, 3.0]])
    best_worst, keep = select_pairs(scores, threshold=0.3)
    assert keep.tolist() == [True, False, False]
    assert best_worst[:, 0].tolist() == [0, 1]
    backbone = tiny_backbone()
    cfg = PoolConfig(k=2, threshold=0.3, steps=4, guidance=5.0, eta=1.0, divert_start_step=1)
    flat = PoolSampler(backbone, _brightness_scorer(0.0), cfg).sample(
        PROMPTS, torch.Generator().manual_seed(0)
    )
    assert len(flat.transitions) == 0


def test_winning_transition_is_the_higher_scored_candidate():
    backbone = _pool_backbone()

    def scorer(images, prompts, timesteps):
        return 1e4 * _pattern(images)

    cfg = PoolConfig(k=2, threshold=0.0, steps=4, guidance=5.0, eta=1.0, divert_start_step=2)
    result = PoolSampler(backbone, scorer, cfg).sample(PROMPTS, torch.Generator().manual_seed(1))
    assert len(result.transitions) == len(PROMPTS)
    score_w = _pattern(result.transitions.x_prev_w)
    score_l = _pattern(result.transitions.x_prev_l)
    assert (score_w > score_l).all()
    torch.testing.assert_close(result.transitions.x_t_w, result.transitions.x_t_l)


def test_sdxl_inner_steps_pair_every_transition_of_the_chunks():
    backbone = _pool_backbone("sdxl")
    calls = []
    unet = backbone.unet_forward
    backbone.unet_forward = lambda x, *a, **kw: calls.append(x.shape[0]) or unet(x, *a, **kw)
    cfg = PoolConfig(
        k=2, threshold=0.0, steps=6, guidance=5.0, eta=1.0, divert_start_step=1, num_inner_steps=2
    )
    result = PoolSampler(backbone, _brightness_scorer(1e4), cfg).sample(
        PROMPTS, torch.Generator().manual_seed(0)
    )
    assert len(calls) == cfg.steps
    t = result.transitions
    # chunks (1, 2, 3) and (4, 5): the last chunk still separates (its first step is noisy),
    # but its step 5 lands on alpha = 1 with sigma = 0 here: no log-probability, no pair. So
    # steps 1-4, one pair per prompt each
    assert pool_final_sigma(backbone, cfg) == 0
    assert len(t) == len(PROMPTS) * 4
    assert sorted(t.timesteps.tolist()) == sorted(
        [int(s) for s in PoolSampler(backbone, None, cfg).schedule.timesteps[1:5]] * 2
    )
    first = t.timesteps == t.timesteps.max()
    torch.testing.assert_close(t.x_t_w[first], t.x_t_l[first])  # a chunk starts shared
    assert not torch.allclose(t.x_t_w[~first], t.x_t_l[~first])  # then the candidates part
    assert len(t.text) == 2  # SDXL: both encoders' embeddings travel with each pair


def test_sdxl_recipe_chunks_are_four_steps_scored_where_the_authors_score():
    # The authors' SDXL pipeline, 20 steps from step 4 with num_inner_step 3: the branching step
    # plus 3 more, i.e. chunks 4-7, 8-11, 12-15, 16-19, each scored on the x0 prediction at the
    # step after it (timesteps 8, 12, 16) and the last on the final sample (t = 0).
    backbone = _pool_backbone("sdxl")
    scorer = _brightness_scorer(1e4)
    cfg = PoolConfig(
        k=2, threshold=0.0, steps=20, guidance=5.0, eta=1.0, divert_start_step=4, num_inner_steps=3
    )
    pool = PoolSampler(backbone, scorer, cfg)
    result = pool.sample(PROMPTS, torch.Generator().manual_seed(0))
    timesteps = [int(t) for t in pool.schedule.timesteps]
    assert [int(t[0]) for t in scorer.seen] == [timesteps[8], timesteps[12], timesteps[16], 0]
    # every step from 4 pairs up but the last, which lands on alpha = 1 here (no noise)
    assert sorted(set(result.transitions.timesteps.tolist()), reverse=True) == timesteps[4:19]
    by_step = {timesteps[i]: i for i in range(20)}
    moves = result.transitions
    starts = [
        by_step[int(t)]
        for t, winner, loser in zip(moves.timesteps, moves.x_t_w, moves.x_t_l)
        if torch.equal(winner, loser)
    ]
    assert sorted(set(starts)) == [4, 8, 12, 16]  # each chunk starts from one shared latent


def _transitions(n: int) -> Transitions:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    ids = torch.arange(n)
    return Transitions(
        x, x, x, x, ids, x.view(n), x.view(n), ids, x.view(n, 1), {"prompt_embeds": x.view(n, 1)}
    )


def test_even_share_hands_each_process_a_disjoint_equal_part():
    everything = _transitions(11)
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    shares = [even_share(everything, rank, 3, permutation) for rank in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    seen = torch.cat([s.prompt_ids for s in shares])
    assert len(set(seen.tolist())) == 9
    assert seen.tolist() == permutation[:9].tolist()
    for share in shares:  # rows stay aligned across fields
        torch.testing.assert_close(share.x_t_w.flatten(), share.prompt_ids.float())


def test_redistribute_with_one_process_is_a_shuffle():
    class OneProcess:
        num_processes = 1

    shuffled = redistribute(_transitions(7), OneProcess(), torch.Generator().manual_seed(0))
    assert sorted(shuffled.prompt_ids.tolist()) == list(range(7))


def test_spo_loss_matches_a_hand_computation():
    logp_w, logp_l = torch.tensor([0.05, -0.3]), torch.tensor([-0.02, 0.4])
    ref_w, ref_l = torch.zeros(2), torch.zeros(2)
    beta, eps = 10.0, 0.1
    expected = 0.0
    for lw, ll in zip(logp_w.tolist(), logp_l.tolist()):
        rw = min(max(math.exp(lw), 1 - eps), 1 + eps)
        rl = min(max(math.exp(ll), 1 - eps), 1 + eps)
        logit = beta * (math.log(rw) - math.log(rl))
        expected += math.log1p(math.exp(-logit)) / 2
    got = spo_loss(logp_w, logp_l, ref_w, ref_l, beta, eps)
    assert abs(got.item() - expected) < 1e-6


def test_spo_loss_gradient_vanishes_outside_the_ratio_clip():
    ref = torch.zeros(4)
    logp_w = torch.tensor([0.05, 0.2, -0.2, 0.0], requires_grad=True)  # ratios 1.05, 1.22, 0.82, 1
    logp_l = torch.tensor([0.0, 0.0, 0.0, -0.5], requires_grad=True)  # ratio 0.61 for the last
    spo_loss(logp_w, logp_l, ref, ref, beta=10.0, eps=0.1).backward()
    assert logp_w.grad[0] < 0  # inside the clip: raise the winner's likelihood
    assert logp_w.grad[1] == 0 and logp_w.grad[2] == 0  # clipped: no gradient
    assert logp_l.grad[0] > 0  # inside: lower the loser's
    assert logp_l.grad[3] == 0  # clipped


def test_spo_loss_rejects_a_bad_clip():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="eps=1.5"):
        spo_loss(x, x, x, x, beta=10.0, eps=1.5)
