"""Running the frozen encoders over pixels and prompts, in bounded mini-batches.

Shared by the cache builder (each shard once) and on-the-fly batches, so both give
bit-for-bit the same kind of tensors: on the CPU, detached, in the encoder's dtype.
"""

from __future__ import annotations

import torch

from alignkit.data.batch import ImageTextEncoder
from alignkit.data.corruption import CorruptRowLog
from alignkit.data.encoded import EncodedPairs
from alignkit.data.pairs import PreferencePairs
from alignkit.data.seeding import derived_generator
from alignkit.data.transforms import PairTransform, PixelPair, UndecodableImageError


@torch.no_grad()
def encode_pixels(
    encoder: ImageTextEncoder,
    pixels: torch.Tensor,
    batch_size: int,
    device: torch.device | str | None = None,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pixels ``[B, 3, H, W]`` -> latents on the CPU, ``batch_size`` images per encoder call;
    posterior samples drawn from ``generators`` (one per image), else the posterior mode."""
    chunks = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        draws = None if generators is None else generators[start : start + batch_size]
        chunks.append(encoder.encode_images(chunk if device is None else chunk.to(device), draws))
    return torch.cat([chunk.detach().cpu() for chunk in chunks]).contiguous()


@torch.no_grad()
def encode_texts(
    encoder: ImageTextEncoder, prompts: list[str], batch_size: int
) -> dict[str, torch.Tensor]:
    """Prompts -> text tensors on the CPU, ``batch_size`` prompts per encoder call."""
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        for name, value in encoder.encode_prompts(prompts[start : start + batch_size]).items():
            parts.setdefault(name, []).append(value.detach().cpu())
    return {name: torch.cat(values).contiguous() for name, values in parts.items()}


def view_pair(
    pairs: PreferencePairs,
    position: int,
    transform: PairTransform,
    generator: torch.Generator,
    corrupt: CorruptRowLog,
) -> PixelPair | None:
    """The pair's training view, or ``None`` (and a record in ``corrupt``) if undecodable."""
    row_id = pairs.row_ids[position]
    try:
        view = transform(*pairs.image_bytes(position), generator)
    except UndecodableImageError as err:
        corrupt.record_corrupt(row_id, str(err))
        return None
    corrupt.record_decoded(row_id)
    return view


def encode_views(
    encoder: ImageTextEncoder,
    views: list[PixelPair],
    batch_size: int,
    device: torch.device | str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner and loser latents of ``views`` (posterior samples when the views carry seeds)."""
    latents = []
    for side, pixels in (("w", [v.pixels_w for v in views]), ("l", [v.pixels_l for v in views])):
        generators = None
        if views[0].latent_seed is not None:
            generators = [derived_generator("latent", v.latent_seed, side) for v in views]
        latents.append(encode_pixels(encoder, torch.stack(pixels), batch_size, device, generators))
    return latents[0], latents[1]


def encode_dataset(
    pairs: PreferencePairs,
    positions: range,
    transform: PairTransform,
    encoder: ImageTextEncoder,
    seed: int,
    batch_size: int,
    corrupt: CorruptRowLog,
    device: torch.device | str | None = None,
) -> EncodedPairs | None:
    """The decodable pairs at ``positions`` in latent space (``None`` if none decodes).

    Each row's crop and flip are drawn once, from a generator seeded by ``(seed, row id)``, so
    a row's view does not depend on which other rows exist or in which order, or by which
    process, they are encoded.
    """
    latents_w, latents_l, micro_cond, kept, captions = [], [], [], [], []
    for start in range(positions.start, positions.stop, batch_size):
        views = {}
        for position in range(start, min(start + batch_size, positions.stop)):
            generator = derived_generator("view", seed, pairs.row_ids[position])
            view = view_pair(pairs, position, transform, generator, corrupt)
            if view is not None:
                views[position] = view
                captions.append(pairs.caption(position))  # while the row is at hand
        if views:
            encoded_w, encoded_l = encode_views(encoder, list(views.values()), batch_size, device)
            latents_w.append(encoded_w)
            latents_l.append(encoded_l)
            micro_cond.extend(view.micro_cond for view in views.values())
            kept.extend(views)
    if not kept:
        return None
    prompts = list(dict.fromkeys(captions))
    prompt_index = {prompt: index for index, prompt in enumerate(prompts)}
    return EncodedPairs(
        latents_w=torch.cat(latents_w),
        latents_l=torch.cat(latents_l),
        micro_cond=torch.stack(micro_cond),
        text_index=torch.tensor([prompt_index[c] for c in captions], dtype=torch.long),
        prompts=prompts,
        text=encode_texts(encoder, prompts, batch_size),
        row_ids=[pairs.row_ids[position] for position in kept],
    )
