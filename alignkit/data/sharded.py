"""A latent cache read in place: shards are memory-mapped and a batch reads only its rows.

Memory holds the index (row id and prompt number per pair, rows per shard) and the distinct
prompts, never the latents, so a run on a million pairs needs about as much memory as one
on a thousand. Shard files are opened on first use and a few stay open.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from alignkit.data.batch import PairBatch
from alignkit.data.cache import CACHE_FORMAT, EMPTY_PROMPT, INDEX, MANIFEST, CacheReadError

#: Shard files kept open at once (each an mmap: address space, not memory).
OPEN_SHARDS = 32


class ShardedColumn:
    """One per-pair tensor of the cache (``latents_w``, ...), sliceable like a tensor."""

    def __init__(self, store: ShardedPairs, name: str) -> None:
        self.store = store
        self.name = name

    def __len__(self) -> int:
        return self.store.num_pairs

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.store.read(self.name, range(*rows.indices(len(self))))


class ShardedPairs:
    """The cached pairs of one folder, addressed by position ``0..num_pairs-1``."""

    def __init__(self, folder: Path) -> None:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            if manifest.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {manifest.get('format')}, expected {CACHE_FORMAT}")
            index = load_file(folder / INDEX)
            self.empty_text = load_file(folder / EMPTY_PROMPT)
            shard_rows = index["shard_rows"].numpy()
            if len(shard_rows) != len(manifest["shards"]):
                raise ValueError(f"{len(shard_rows)} shard sizes for {manifest['shards']}")
            self.shards = [folder / name for name in manifest["shards"]]
            for path, rows in zip(self.shards, shard_rows.tolist()):
                with safe_open(path, framework="pt") as shard:
                    stored = shard.get_slice("row_ids").get_shape()[0]
                if stored != rows:
                    raise ValueError(f"{path.name} holds {stored} rows, the index says {rows}")
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise CacheReadError(f"cannot read the latent cache {folder}: {err}") from None
        self.manifest: dict[str, Any] = manifest
        self.cache_folder = folder
        self.prompts: list[str] = manifest["prompts"]
        self.text_names: list[str] = manifest["text_names"]
        self.row_ids: list[int] = index["row_ids"].tolist()
        self.text_index = index["text_index"]
        self._shard_starts = np.concatenate([[0], np.cumsum(shard_rows)])[:-1]
        self.latents_w = ShardedColumn(self, "latents_w")
        self.latents_l = ShardedColumn(self, "latents_l")
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def num_pairs(self) -> int:
        return len(self.row_ids)

    def _shard(self, number: int) -> Any:
        with self._lock:
            if number in self._open:
                self._open.move_to_end(number)
                return self._open[number]
            handle = safe_open(self.shards[number], framework="pt")
            self._open[number] = handle
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
            return handle

    def _locate(self, positions: list[int] | range) -> list[tuple[int, int]]:
        """(shard number, row in shard) of each position."""
        wanted = np.asarray(positions, dtype=np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.num_pairs):
            raise IndexError(f"positions outside 0..{self.num_pairs - 1}: {positions}")
        shards = np.searchsorted(self._shard_starts, wanted, side="right") - 1
        rows = wanted - self._shard_starts[shards]
        return list(zip(shards.tolist(), rows.tolist()))

    def read(self, name: str, positions: list[int] | range) -> torch.Tensor:
        """Tensor ``name`` at ``positions``, stacked; only those rows are read from disk.

        Neighbouring rows of one shard are read as one slice (a sequential pass reads
        whole runs).
        """
        runs: list[list[int]] = []  # [shard, first row, end row]
        for shard, row in self._locate(positions):
            if runs and runs[-1][0] == shard and runs[-1][2] == row:
                runs[-1][2] += 1
            else:
                runs.append([shard, row, row + 1])
        return torch.cat(
            [self._shard(shard).get_slice(name)[first:end] for shard, first, end in runs]
        )

    def _text(self, located: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        text: dict[str, list[torch.Tensor]] = {name: [] for name in self.text_names}
        for shard, row in located:
            handle = self._shard(shard)
            local = int(handle.get_slice("text_index")[row : row + 1])
            for name in self.text_names:
                text[name].append(handle.get_slice(f"text.{name}")[local : local + 1])
        return {name: torch.cat(values) for name, values in text.items()}

    def gather(self, positions: list[int], epoch: int) -> PairBatch:
        """The pairs at ``positions`` (the epoch does not matter: views were fixed once)."""
        located = self._locate(positions)
        prompt_rows = self.text_index[torch.tensor(positions, dtype=torch.long)]
        return PairBatch(
            latents_w=self.read("latents_w", positions),
            latents_l=self.read("latents_l", positions),
            text=self._text(located),
            micro_cond=self.read("micro_cond", positions),
            prompts=[self.prompts[row] for row in prompt_rows.tolist()],
            row_ids=[self.row_ids[position] for position in positions],
        )
