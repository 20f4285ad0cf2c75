"""Pairs decoded and encoded when a batch asks for them (``data.cache=false``).

Costs an encoder pass per batch, but sees a fresh crop and flip every epoch and needs no
disk. Undecodable rows are only found when reached: each is replaced by the next decodable
row in dataset order, and the corrupt fraction is checked over the rows seen so far.
"""

from __future__ import annotations

import logging

import torch

from alignkit.data.batch import ImageTextEncoder, PairBatch
from alignkit.data.corruption import CorruptDataError, CorruptRowLog
from alignkit.data.encoding import encode_texts, encode_views, view_pair
from alignkit.data.pairs import PreferencePairs
from alignkit.data.seeding import derived_generator
from alignkit.data.transforms import PairTransform, PixelPair

log = logging.getLogger(__name__)

#: Rows to see before the corrupt fraction is trusted (fewer if the dataset is smaller).
MIN_ROWS_BEFORE_CHECK = 100


class StreamingPairs:
    def __init__(
        self,
        pairs: PreferencePairs,
        transform: PairTransform,
        encoder: ImageTextEncoder,
        seed: int,
        encode_batch_size: int,
        corrupt: CorruptRowLog,
        device: torch.device | str | None = None,
    ) -> None:
        self.pairs = pairs
        self.transform = transform
        self.encoder = encoder
        self.seed = seed
        self.encode_batch_size = encode_batch_size
        self.corrupt = corrupt
        self.device = device
        self._empty_text: dict[str, torch.Tensor] | None = None

    @property
    def num_pairs(self) -> int:
        return self.pairs.num_pairs

    @property
    def empty_text(self) -> dict[str, torch.Tensor]:
        """The encoding of "" (computed on first use: only caption dropout needs it)."""
        if self._empty_text is None:
            self._empty_text = encode_texts(self.encoder, [""], 1)
        return self._empty_text

    def _decodable_view(self, position: int, epoch: int) -> tuple[int, PixelPair]:
        for step in range(self.num_pairs):
            candidate = (position + step) % self.num_pairs
            row_id = self.pairs.row_ids[candidate]
            if self.corrupt.is_corrupt(row_id):
                continue
            generator = derived_generator("view", self.seed, epoch, row_id)
            view = view_pair(self.pairs, candidate, self.transform, generator, self.corrupt)
            if view is not None:
                return candidate, view
            log.warning(
                "skipping row %d of %s: %s (%d of %d rows seen so far are corrupt)",
                row_id,
                self.corrupt.where,
                self.corrupt.corrupt[row_id],
                len(self.corrupt.corrupt),
                self.corrupt.seen,
            )
            self.corrupt.raise_if_too_many(min(self.num_pairs, MIN_ROWS_BEFORE_CHECK))
        raise CorruptDataError(
            f"none of the {self.num_pairs} pairs in {self.corrupt.where} has decodable images "
            f"(rows {self.corrupt.corrupt_preview()}); check that jpg_0/jpg_1 hold encoded images"
        )

    def gather(self, positions: list[int], epoch: int) -> PairBatch:
        """Decode, view (crop and flip drawn from ``(seed, epoch, row id)``) and encode."""
        chosen = [self._decodable_view(position, epoch) for position in positions]
        self.corrupt.raise_if_too_many(min(self.num_pairs, MIN_ROWS_BEFORE_CHECK))
        views = [view for _, view in chosen]
        latents_w, latents_l = encode_views(
            self.encoder, views, self.encode_batch_size, self.device
        )
        prompts = [self.pairs.caption(position) for position, _ in chosen]
        return PairBatch(
            latents_w=latents_w,
            latents_l=latents_l,
            text=encode_texts(self.encoder, prompts, len(prompts)),
            micro_cond=torch.stack([view.micro_cond for view in views]),
            prompts=prompts,
            row_ids=[self.pairs.row_ids[position] for position, _ in chosen],
        )
