"""Preference-pair micro-batches addressed by index, so a resumed run sees the same data.

``batch(i)`` depends only on ``i`` (and the settings): the epoch is ``i // batches_per_epoch``,
each epoch visits the pairs in a permutation drawn from ``(seed, epoch)``, the incomplete
last batch of an epoch is dropped, and caption dropout is drawn from ``(seed, i)``.

With ``data.cache=true`` (the default) the VAE latents and text embeddings are computed once
and reused from disk; each row's crop and flip are then drawn once, from ``(seed, row id)``,
and stay fixed across epochs. With ``data.cache=false`` every batch is decoded and encoded
when asked for, with a fresh crop and flip per epoch from ``(seed, epoch, row id)``.

With ``data.num_workers > 0`` the next batches this process will ask for are made in
background threads while it trains; being functions of their index, they are the same.
"""

from __future__ import annotations

import dataclasses

import torch

from alignkit.config import DataConfig
from alignkit.data.batch import ImageTextEncoder, PairBatch
from alignkit.data.prefetch import Prefetcher
from alignkit.data.seeding import derived_generator
from alignkit.data.source import resolve_source
from alignkit.data.stores import PairStore, open_cached_pairs, open_streaming_pairs
from alignkit.data.transforms import PairTransform

#: data.latents: a VAE posterior sample per view (official) or its mode.
LATENT_CHOICES = ("sample", "mode")


def _check_settings(cfg: DataConfig, resolution: int, batch_size: int) -> None:
    problems = []
    if cfg.kind != "pairs":
        problems.append(f"data.kind={cfg.kind!r} (preference-pair batches need 'pairs')")
    if resolution < 1:
        problems.append(f"resolution={resolution} (must be a positive number of pixels)")
    if batch_size < 1:
        problems.append(f"batch_size={batch_size} (must be at least 1)")
    if not 0.0 <= cfg.caption_dropout <= 1.0:
        problems.append(f"data.caption_dropout={cfg.caption_dropout} (must lie in [0, 1])")
    if not 0.0 <= cfg.max_corrupt_fraction <= 1.0:
        problems.append(
            f"data.max_corrupt_fraction={cfg.max_corrupt_fraction} (must lie in [0, 1])"
        )
    if cfg.latents not in LATENT_CHOICES:
        problems.append(f"data.latents={cfg.latents!r} (choose {' or '.join(LATENT_CHOICES)})")
    if cfg.encode_batch_size < 1:
        problems.append(f"data.encode_batch_size={cfg.encode_batch_size} (must be at least 1)")
    if cfg.max_rows is not None and cfg.max_rows < 1:
        problems.append(f"data.max_rows={cfg.max_rows} (must be at least 1, or null for all)")
    if cfg.shard_pairs < 1:
        problems.append(f"data.shard_pairs={cfg.shard_pairs} (must be at least 1)")
    if cfg.num_workers < 0:
        problems.append(f"data.num_workers={cfg.num_workers} (must be 0, no prefetch, or more)")
    if cfg.streaming and not cfg.cache:
        problems.append(
            "data.streaming=true with data.cache=false (a stream is read front to back, so it "
            "can feed the cache build but not batches in random order; set data.cache=true)"
        )
    if problems:
        raise ValueError("invalid data settings: " + "; ".join(problems))


class PairBatches:
    """Micro-batches of preference pairs, winner first, in latent space; see the module doc."""

    def __init__(
        self,
        cfg: DataConfig,
        encoder: ImageTextEncoder,
        resolution: int,
        batch_size: int,
        seed: int,
        device: torch.device | str | None = None,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> None:
        _check_settings(cfg, resolution, batch_size)
        source = resolve_source(cfg.path, cfg.split, cfg.streaming)
        transform = PairTransform(
            resolution, cfg.random_crop, cfg.random_flip, cfg.latents == "sample"
        )
        if cfg.cache:
            self.store: PairStore = open_cached_pairs(
                cfg, source, encoder, transform, seed, device, process_index, num_processes
            )
        else:
            self.store = open_streaming_pairs(cfg, source, encoder, transform, seed, device)
        self.batch_size = batch_size
        self.seed = seed
        self.source_identity = source.identity()  # the data files (sizes, modification times)
        self.caption_dropout = cfg.caption_dropout
        self._epoch_order: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.long))
        if self.num_pairs < batch_size:
            raise ValueError(
                f"{source.describe()} has {self.num_pairs} usable pairs (after dropping ties "
                f"and undecodable rows), fewer than one batch of {batch_size}; lower the batch "
                "size (trainer.batch_size), keep ties (data.drop_ties=false) or add data"
            )
        # each process asks for every num_processes-th batch (the trainer's interleaving)
        self._prefetcher = Prefetcher(self._make_batch, cfg.num_workers, stride=num_processes)

    @property
    def num_pairs(self) -> int:
        return self.store.num_pairs

    @property
    def batches_per_epoch(self) -> int:
        return self.num_pairs // self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The pair positions in the order epoch ``epoch`` visits them."""
        cached_epoch, order = self._epoch_order  # one read: prefetch threads replace it
        if cached_epoch != epoch:
            generator = derived_generator("epoch", self.seed, epoch)
            order = torch.randperm(self.num_pairs, generator=generator)
            self._epoch_order = (epoch, order)
        return order

    def batch(self, index: int) -> PairBatch:
        """Micro-batch number ``index`` (counted from 0 over all epochs), on the CPU."""
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        return self._prefetcher.get(index)

    def _make_batch(self, index: int) -> PairBatch:
        epoch, offset = divmod(index, self.batches_per_epoch)
        start = offset * self.batch_size
        positions = self.epoch_order(epoch)[start : start + self.batch_size].tolist()
        batch = self._drop_captions(self.store.gather(positions, epoch), index)
        return dataclasses.replace(batch, index=index)

    def _drop_captions(self, batch: PairBatch, index: int) -> PairBatch:
        """Swap in the empty prompt's encoding with probability ``caption_dropout`` per pair."""
        if self.caption_dropout <= 0:
            return batch
        draws = torch.rand(len(batch), generator=derived_generator("caption", self.seed, index))
        dropped = draws < self.caption_dropout
        if not dropped.any():
            return batch
        text = {}
        for name, value in batch.text.items():
            value = value.clone()
            value[dropped] = self.store.empty_text[name][0].to(value.dtype)
            text[name] = value
        prompts = ["" if drop else prompt for drop, prompt in zip(dropped.tolist(), batch.prompts)]
        return dataclasses.replace(batch, text=text, prompts=prompts)


def build_pair_batches(
    cfg: DataConfig,
    encoder: ImageTextEncoder,
    resolution: int,
    batch_size: int,
    seed: int,
    device: torch.device | str | None = None,
    process_index: int = 0,
    num_processes: int = 1,
) -> PairBatches:
    """The batch source a trainer draws from: ``PairBatches`` for ``cfg``.

    ``process_index`` of ``num_processes`` decides which cache shards this process encodes.
    """
    return PairBatches(
        cfg, encoder, resolution, batch_size, seed, device, process_index, num_processes
    )
