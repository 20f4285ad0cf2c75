"""Opening the pairs a run trains on: from the latent cache (built on a miss) or streaming."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch

from alignkit.config import DataConfig
from alignkit.data.batch import ImageTextEncoder, PairBatch
from alignkit.data.cache import (
    CACHE_DIR_ENV,
    MANIFEST,
    CacheReadError,
    CacheWriteError,
    cache_key,
    cache_root,
)
from alignkit.data.cache_build import CachePlan, Encoding, build_cache
from alignkit.data.corruption import CorruptDataError, CorruptRowLog
from alignkit.data.pairs import PreferencePairs
from alignkit.data.sharded import ShardedPairs
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
        "shard_pairs": cfg.shard_pairs,
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
    pairs = PreferencePairs(source.open(cfg.max_rows), cfg.drop_ties, where)
    corrupt = CorruptRowLog(cfg.max_corrupt_fraction, where)
    return StreamingPairs(pairs, transform, encoder, seed, cfg.encode_batch_size, corrupt, device)


def _check_cached_corruption(store: ShardedPairs, cfg: DataConfig) -> None:
    """Apply ``data.max_corrupt_fraction`` to the rows the build could not decode."""
    manifest = store.manifest
    corrupt = CorruptRowLog(cfg.max_corrupt_fraction, manifest["source"])
    for row_id, reason in manifest["corrupt_rows"]:
        corrupt.record_corrupt(row_id, reason)
    if not store.num_pairs:
        raise CorruptDataError(
            f"none of the {corrupt.seen} pairs in {corrupt.where} has decodable images (rows "
            f"{corrupt.corrupt_preview()}); check that jpg_0/jpg_1 hold encoded images"
        )
    for row_id in store.row_ids:
        corrupt.record_decoded(row_id)
    corrupt.raise_if_too_many()
    corrupt.warn_summary()


def _open_existing(folder: Path) -> ShardedPairs | None:
    """The finished cache in ``folder``; ``None`` (and the folder removed) if unreadable."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        return ShardedPairs(folder)
    except CacheReadError as err:
        log.warning("%s; deleting it and encoding again", err)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def open_cached_pairs(
    cfg: DataConfig,
    source: LocalParquet | HubDataset,
    encoder: ImageTextEncoder,
    transform: PairTransform,
    seed: int,
    device: torch.device | str | None,
    process_index: int = 0,
    num_processes: int = 1,
) -> ShardedPairs:
    """The cached dataset in ``<cache root>/<key>``, built (in parallel, resumably) on a miss.

    Each of ``num_processes`` processes encodes its share of the shards, then all read the
    whole cache.
    """
    parts = cache_key_parts(cfg, source, encoder, transform.resolution, seed)
    key = cache_key(parts)
    folder = cache_root(cfg.cache_dir) / key
    store = _open_existing(folder)
    if store is not None:
        log.info(
            "latent cache hit: %s (%d pairs; %d tie rows dropped)",
            folder,
            store.num_pairs,
            store.manifest["ties_dropped"],
        )
    else:
        where = source.describe()
        pairs = PreferencePairs(source.open(cfg.max_rows), cfg.drop_ties, where)
        plan = CachePlan(folder, pairs.num_pairs, cfg.shard_pairs)
        log.info(
            "latent cache miss: encoding %d pairs of %s into %s", pairs.num_pairs, where, folder
        )
        record = {
            "key": key,
            "key_parts": parts,
            "source": where,
            "source_rows": pairs.source_rows,
            "ties_dropped": pairs.ties_dropped,
        }
        encoding = Encoding(encoder, transform, seed, cfg.encode_batch_size, device)
        try:
            build_cache(plan, pairs, encoding, record, process_index, num_processes)
        except OSError as err:
            raise CacheWriteError(
                f"could not write the latent cache to {folder} ({err}); set data.cache_dir or "
                f"{CACHE_DIR_ENV} to a writable folder with room for the encodings, or encode "
                "on the fly with data.cache=false"
            ) from None
        store = ShardedPairs(folder)
    _check_cached_corruption(store, cfg)
    return store
