"""Attention over few tokens as two plain products in a reused score buffer (CPU).

Sampling 64 px images, the UNet's top level attends over 64 pixel tokens (and 77 text
tokens) with head width 12. There the CPU flash-attention kernel runs at about 60% of the
rate of writing the scores out: ``softmax(q k^T / sqrt(d)) v`` as two batched matrix
products. The scores take ``rows * heads * L * S`` floats, a few MB at these sizes; one
buffer per shape is reused for the loop, because allocating it at every call costs as much
as the products (the allocator hands such blocks back to the system). Above ``MAX_SCORES``
query-key pairs flash attention wins and keeps its place, as does every call it does not
cover (masks, normalisations, gradients, other devices).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from alignkit.models.prepacked_weights import plain_cpu_inference

#: query x key tokens up to which the written-out scores beat flash attention on the CPU (our
#: measurement: 64 x 77 at head width 12 runs 1.5-1.7x faster; 256 x 256 runs 3x slower)
MAX_SCORES = 64 * 128


def attention_into(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``[batch, heads, L|S, d]`` inputs, the scores
    written into ``scores [batch * heads, L, S]``; the output is a new tensor."""
    batch, heads, length, width = query.shape
    flat = (batch * heads, -1, width)
    torch.baddbmm(
        scores,
        query.reshape(flat),
        key.reshape(flat).transpose(1, 2),
        beta=0.0,
        alpha=width**-0.5,
        out=scores,
    )
    torch.softmax(scores, dim=-1, out=scores)
    return torch.bmm(scores, value.reshape(flat)).view(batch, heads, length, width)


def _covered_layer(attn: Attention) -> bool:
    """diffusers' default processor, no normalisation, residual or rescaling around it."""
    return (
        type(attn.processor) is AttnProcessor2_0
        and attn.spatial_norm is None
        and attn.group_norm is None
        and not attn.norm_cross
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.residual_connection
        and attn.rescale_output_factor == 1.0
    )


class _SmallAttention:
    """Stands in for ``AttnProcessor2_0`` on the calls it covers, shares one buffer per
    score shape with the other layers of the loop."""

    def __init__(self, processor: AttnProcessor2_0, buffers: dict[tuple, torch.Tensor]) -> None:
        self.processor, self.buffers = processor, buffers

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        covered = (
            hidden_states.dim() == 3
            and attention_mask is None
            and temb is None
            and not args
            and not kwargs
            and hidden_states.shape[1] * context.shape[1] <= MAX_SCORES
            and plain_cpu_inference(hidden_states)
        )
        if not covered:
            return self.processor(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        batch, length, inner = query.shape
        heads, width = attn.heads, inner // attn.heads
        query, key, value = (
            t.view(batch, -1, heads, width).transpose(1, 2) for t in (query, key, value)
        )
        shape = (batch * heads, length, key.shape[2])
        if shape not in self.buffers:
            self.buffers[shape] = torch.empty(shape, dtype=query.dtype)
        out = attention_into(query, key, value, self.buffers[shape])
        out = out.transpose(1, 2).reshape(batch, length, inner)
        return attn.to_out[1](attn.to_out[0](out))


@contextmanager
def small_attention(unets: list[torch.nn.Module]) -> Iterator[None]:
    """The UNets' plain ``AttnProcessor2_0`` layers compute few-token attention with written
    out scores for the duration; their processors are put back on exit."""
    buffers: dict[tuple, torch.Tensor] = {}
    layers = [
        m
        for unet in unets
        for m in unet.modules()
        if isinstance(m, Attention) and _covered_layer(m)
    ]
    originals = [layer.processor for layer in layers]
    try:
        for layer, processor in zip(layers, originals):
            layer.processor = _SmallAttention(processor, buffers)
        yield
    finally:
        for layer, processor in zip(layers, originals):
            layer.processor = processor
