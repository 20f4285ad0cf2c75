"""Few-token attention with written-out scores (``alignkit.models.small_attention``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models import attention_processor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from alignkit.models.small_attention import MAX_SCORES, attention_into, small_attention
from tests.model_helpers import tiny_backbone


def test_one_query_over_two_keys_by_hand():
    query = torch.tensor([[[[2.0, 0.0]]]])  # [batch, heads, L=1, d=2]
    key = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    value = torch.tensor([[[[10.0, 0.0], [0.0, 10.0]]]])
    # scores 2/sqrt(2) and 0: weights sigmoid(sqrt(2)) and 1 - sigmoid(sqrt(2))
    first = torch.sigmoid(torch.tensor(2.0**0.5)).item()
    out = attention_into(query, key, value, torch.empty(1, 1, 2))
    torch.testing.assert_close(out, torch.tensor([[[[10 * first, 10 * (1 - first)]]]]))


def test_written_out_scores_equal_sdpa_and_the_buffer_is_not_the_output():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 6, generator=generator) for n in (5, 7, 7))
    scores = torch.empty(6, 5, 7)
    first = attention_into(q, k, v, scores)
    torch.testing.assert_close(first, F.scaled_dot_product_attention(q, k, v))
    kept = first.clone()
    attention_into(q.flip(0), k, v, scores)  # the same buffer, other queries
    torch.testing.assert_close(first, kept)


def _count_sdpa(monkeypatch) -> list[int]:
    calls = [0]
    original = attention_processor.F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(attention_processor.F, "scaled_dot_product_attention", counted)
    return calls


def _unet_inputs(backbone, rows: int = 2):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(rows, 4, 4, 4, generator=generator)
    text = backbone.encode_prompts(["a red cube", "a blue ball"][:rows])
    return latents, torch.full((rows,), 500), text


def test_a_unet_call_is_unchanged_and_flash_attention_is_not_called(monkeypatch):
    backbone = tiny_backbone()
    unet = backbone.unet
    latents, timesteps, text = _unet_inputs(backbone)
    with torch.no_grad():
        expected = backbone.predict(latents, timesteps, text, None)
        calls = _count_sdpa(monkeypatch)
        processors = [m.processor for m in unet.modules() if isinstance(m, Attention)]
        with small_attention([unet]):
            got = backbone.predict(latents, timesteps, text, None)
    assert calls[0] == 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert [m.processor for m in unet.modules() if isinstance(m, Attention)] == processors


def test_gradients_and_many_tokens_keep_flash_attention(monkeypatch):
    attn = Attention(query_dim=8, heads=2, dim_head=4, processor=AttnProcessor2_0())
    few = torch.randn(2, 4, 8)
    many = torch.randn(1, int(MAX_SCORES**0.5) + 1, 8)
    calls = _count_sdpa(monkeypatch)
    with small_attention([attn]):
        with torch.no_grad():
            attn(few)
            assert calls[0] == 0
            attn(many)
            assert calls[0] == 1
        attn(few.requires_grad_()).sum().backward()
        assert calls[0] == 2


@pytest.mark.parametrize("variant", ["residual", "masked"])
def test_calls_with_more_than_the_products_keep_the_default_processor(variant, monkeypatch):
    residual = variant == "residual"
    attn = Attention(query_dim=8, heads=2, dim_head=4, residual_connection=residual)
    x = torch.randn(2, 4, 8)
    mask = torch.zeros(2, 4, dtype=torch.bool) if variant == "masked" else None
    with torch.no_grad():
        expected = attn(x) if mask is None else attn(x, attention_mask=mask.logical_not())
        calls = _count_sdpa(monkeypatch)
        with small_attention([attn]):
            got = attn(x) if mask is None else attn(x, attention_mask=mask.logical_not())
    assert calls[0] == 1
    torch.testing.assert_close(got, expected)
