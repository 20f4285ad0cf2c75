"""Building the latent cache in parallel and resumably, one shard at a time.

Shard N holds dataset positions ``[N*S, (N+1)*S)``; process ``r`` of ``w`` encodes the shards
with ``N % w == r`` that do not exist yet, so ``w`` processes share the work, and a build
that crashed resumes where it stopped. Every row's view is seeded by its row id, so the
tensors do not depend on how many processes built them or how often the build restarted.
Process 0 writes the index once all shards exist; the others wait for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignkit.data.batch import ImageTextEncoder
from alignkit.data.cache import (
    EMPTY_PROMPT,
    MANIFEST,
    CacheReadError,
    read_shard_metadata,
    shard_name,
    write_empty_prompt,
    write_index,
    write_shard,
)
from alignkit.data.corruption import CorruptRowLog
from alignkit.data.encoding import encode_dataset, encode_texts
from alignkit.data.pairs import PreferencePairs
from alignkit.data.transforms import PairTransform

log = logging.getLogger(__name__)

#: How often a process that finished its shards looks for the others' (seconds).
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class CachePlan:
    """Which dataset positions go into which shard file of ``folder``."""

    folder: Path
    num_pairs: int
    shard_pairs: int

    @property
    def num_shards(self) -> int:
        return -(-self.num_pairs // self.shard_pairs)

    @property
    def shard_names(self) -> list[str]:
        return [shard_name(number) for number in range(self.num_shards)]

    def positions(self, number: int) -> range:
        start = number * self.shard_pairs
        return range(start, min(start + self.shard_pairs, self.num_pairs))

    def owned(self, process_index: int, num_processes: int) -> list[int]:
        """The shard numbers that process ``process_index`` of ``num_processes`` builds."""
        return list(range(process_index, self.num_shards, num_processes))

    def is_built(self, number: int) -> bool:
        """Whether shard ``number`` exists whole and covers the positions it should."""
        path = self.folder / shard_name(number)
        if not path.is_file():
            return False
        try:
            return read_shard_metadata(path)["positions"] == self.positions(number)
        except CacheReadError as err:
            log.warning("%s; encoding that shard again", err)
            return False


@dataclass(frozen=True)
class Encoding:
    """What turns a source row into cached tensors."""

    encoder: ImageTextEncoder
    transform: PairTransform
    seed: int
    batch_size: int
    device: torch.device | str | None = None


def build_shards(
    plan: CachePlan,
    pairs: PreferencePairs,
    encoding: Encoding,
    process_index: int = 0,
    num_processes: int = 1,
) -> int:
    """Encode this process's missing shards (and the empty prompt); returns how many."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    if not (plan.folder / EMPTY_PROMPT).is_file():
        write_empty_prompt(plan.folder, encode_texts(encoding.encoder, [""], 1))
    missing = [n for n in plan.owned(process_index, num_processes) if not plan.is_built(n)]
    total = sum(len(plan.positions(number)) for number in missing)
    description = f"encoding pairs (process {process_index} of {num_processes})"
    with tqdm(total=total, desc=description, unit="pair") as bar:
        for number in missing:
            positions = plan.positions(number)
            corrupt = CorruptRowLog(1.0, str(plan.folder))  # the threshold is checked later
            encoded = encode_dataset(
                pairs,
                positions,
                encoding.transform,
                encoding.encoder,
                encoding.seed,
                encoding.batch_size,
                corrupt,
                encoding.device,
            )
            write_shard(plan.folder / shard_name(number), positions, encoded, corrupt.corrupt)
            bar.update(len(positions))
    return len(missing)


def wait_for(paths: list[Path], what: str, poll_seconds: float = POLL_SECONDS) -> None:
    """Block until every path exists, saying now and then what it waits for."""
    last_report = time.monotonic()
    while missing := [path for path in paths if not path.exists()]:
        if time.monotonic() - last_report > 60:
            log.info("waiting for %d %s from other processes", len(missing), what)
            last_report = time.monotonic()
        time.sleep(poll_seconds)


def build_cache(
    plan: CachePlan,
    pairs: PreferencePairs,
    encoding: Encoding,
    record: dict[str, Any],
    process_index: int = 0,
    num_processes: int = 1,
) -> None:
    """Build this process's shards, then wait until the whole cache (with its index) exists."""
    started = time.perf_counter()
    built = build_shards(plan, pairs, encoding, process_index, num_processes)
    wait_for([plan.folder / name for name in plan.shard_names], "cache shards")
    if process_index == 0:
        write_index(plan.folder, plan.shard_names, record)
    else:
        wait_for([plan.folder / MANIFEST], "cache index")
    seconds = time.perf_counter() - started
    log.info(
        "latent cache ready: %d pairs in %d shards (%d encoded by process %d of %d) in %.1f s "
        "(%.1f pairs/s over all processes)",
        plan.num_pairs,
        plan.num_shards,
        built,
        process_index,
        num_processes,
        seconds,
        plan.num_pairs / max(seconds, 1e-9),
    )
