"""Opening the pairs a run trains on: from the latent cache (built on a miss) or streaming."""

from __future__ import annotations

import logging
import shutil
from typing import Any, Protocol

import torch

from alignkit.config import DataConfig
from alignkit.data.batch import ImageTextEncoder, PairBatch
from alignkit.data.cache import (
    MANIFEST,
    CacheReadError,
    cache_key,
    cache_root,
    load_encoded,
    save_encoded,
)
from alignkit.data.corruption import CorruptRowLog
from alignkit.data.encoded import EncodedPairs
from alignkit.data.encoding import encode_dataset
from alignkit.data.pairs import PreferencePairs
from alignkit.data.source import HubDataset, LocalParquet
from alignkit.data.streaming import StreamingPairs
from alignkit.data.transforms import PairTransform

log = logging.getLogger(__name__)


class PairStore(Protocol):
    """Pairs addressable by position; ``gather`` gives them winner first, in latent space."""

    @property
    def num_pairs(self) -> int: ...

    @property
    def empty_text(self) -> dict[str, torch.Tensor]: ...

    def gather(self, positions: list[int], epoch: int) -> PairBatch: ...


def cache_key_parts(
    cfg: DataConfig,
    source: LocalParquet | HubDataset,
    encoder: ImageTextEncoder,
    resolution: int,
    seed: int,
) -> dict[str, Any]:
    """Everything that decides the cached tensors (the corrupt threshold is re-checked instead)."""
    return {
        "encoder": encoder.identity,
        "resolution": resolution,
        "data": source.identity(),
        "max_rows": cfg.max_rows,
        "drop_ties": cfg.drop_ties,
        "random_crop": cfg.random_crop,
        "random_flip": cfg.random_flip,
        "latents": cfg.latents,
        "seed": seed,
    }


def open_streaming_pairs(
    cfg: DataConfig,
    source: LocalParquet | HubDataset,
    encoder: ImageTextEncoder,
    transform: PairTransform,
    seed: int,
    device: torch.device | str | None,
) -> StreamingPairs:
    where = source.describe()
    pairs = PreferencePairs(source.load(cfg.max_rows), cfg.drop_ties, where)
    corrupt = CorruptRowLog(cfg.max_corrupt_fraction, where)
    return StreamingPairs(pairs, transform, encoder, seed, cfg.encode_batch_size, corrupt, device)


def _check_cached_corruption(
    manifest: dict[str, Any], encoded: EncodedPairs, cfg: DataConfig
) -> None:
    corrupt = CorruptRowLog(cfg.max_corrupt_fraction, manifest["source"])
    for row_id in encoded.row_ids:
        corrupt.record_decoded(row_id)
    for row_id, reason in manifest["corrupt_rows"]:
        corrupt.record_corrupt(row_id, reason)
    corrupt.raise_if_too_many()
    corrupt.warn_summary()


def open_cached_pairs(
    cfg: DataConfig,
    source: LocalParquet | HubDataset,
    encoder: ImageTextEncoder,
    transform: PairTransform,
    seed: int,
    device: torch.device | str | None,
) -> EncodedPairs:
    """The encoded dataset from ``<cache root>/<key>``, encoding and writing it on a miss."""
    parts = cache_key_parts(cfg, source, encoder, transform.resolution, seed)
    key = cache_key(parts)
    folder = cache_root(cfg.cache_dir) / key
    if (folder / MANIFEST).is_file():
        try:
            encoded, manifest = load_encoded(folder)
        except CacheReadError as err:
            log.warning("%s; deleting it and encoding again", err)
            shutil.rmtree(folder, ignore_errors=True)
        else:
            log.info(
                "latent cache hit: %s (%d pairs; %d tie rows dropped)",
                folder,
                encoded.num_pairs,
                manifest["ties_dropped"],
            )
            _check_cached_corruption(manifest, encoded, cfg)
            encoded.cache_folder = folder
            return encoded
    where = source.describe()
    pairs = PreferencePairs(source.load(cfg.max_rows), cfg.drop_ties, where)
    corrupt = CorruptRowLog(cfg.max_corrupt_fraction, where)
    log.info("latent cache miss: encoding %d pairs of %s into %s", pairs.num_pairs, where, folder)
    encoded = encode_dataset(
        pairs, transform, encoder, seed, cfg.encode_batch_size, corrupt, device
    )
    record = {
        "key": key,
        "key_parts": parts,
        "source": where,
        "source_rows": pairs.source_rows,
        "ties_dropped": pairs.ties_dropped,
        "corrupt_rows": sorted(corrupt.corrupt.items()),
    }
    try:
        save_encoded(encoded, folder, record)
        encoded.cache_folder = folder
    except OSError as err:
        log.warning(
            "could not write the latent cache to %s (%s); training goes on without it. Set "
            "data.cache_dir or ALIGNKIT_CACHE_DIR to a writable folder to reuse the encodings",
            folder,
            err,
        )
    corrupt.raise_if_too_many()
    corrupt.warn_summary()
    return encoded
