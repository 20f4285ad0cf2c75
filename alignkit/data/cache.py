"""The on-disk latent cache: a dataset's encodings, computed once per model, view and data.

Layout of ``<cache root>/<key>/``:

* ``pairs-NNNNN.safetensors``: shard N, the pairs at positions ``[N*S, (N+1)*S)`` of the
  dataset (S = ``data.shard_pairs``) that decoded: ``latents_w``, ``latents_l``,
  ``micro_cond``, ``row_ids``, ``text_index`` per row and ``text.<name>`` per distinct
  prompt of the shard; its metadata lists those prompts, the positions it covers and its
  undecodable rows. Shards are independent, so processes build them in parallel, and a
  finished one is never encoded again.
* ``empty_prompt.safetensors``: the encoding of "" (caption dropout).
* ``index.safetensors`` (row ids, global prompt index, rows per shard) and
  ``manifest.json`` (key parts, distinct prompts, tie and corrupt-row counts), written once
  every shard exists: a folder with a manifest is complete.

Every file is written under a temporary name, flushed to disk and renamed into place, so a
crash leaves only whole files, which a rerun keeps.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from alignkit.data.encoded import EncodedPairs
from alignkit.durable import TEMPORARY_SUFFIX, publish

CACHE_FORMAT = 2
CACHE_DIR_ENV = "ALIGNKIT_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/alignkit/latents"
MANIFEST = "manifest.json"
INDEX = "index.safetensors"
EMPTY_PROMPT = "empty_prompt.safetensors"


class CacheReadError(RuntimeError):
    """A cache folder exists but cannot be read back (edited, truncated, old format)."""


class CacheWriteError(ValueError):
    """The cache folder cannot be written (no permission, disk full): a setting to change."""


def cache_root(configured: str | None) -> Path:
    """``data.cache_dir`` if set, else ``$ALIGNKIT_CACHE_DIR``, else the default under ``~``."""
    return Path(configured or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def cache_key(parts: dict[str, Any]) -> str:
    """A short hash of everything that decides the cached tensors."""
    canonical = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def shard_name(number: int) -> str:
    return f"pairs-{number:05d}.safetensors"


def write_shard(
    path: Path, positions: range, encoded: EncodedPairs | None, corrupt: dict[int, str]
) -> None:
    """Publish one shard: its encoded pairs (none if no row decoded) and its corrupt rows."""
    metadata = {
        "positions": json.dumps([positions.start, positions.stop]),
        "prompts": json.dumps(encoded.prompts if encoded else []),
        "corrupt_rows": json.dumps(sorted(corrupt.items())),
    }
    if encoded is None:
        tensors = {"row_ids": torch.zeros(0, dtype=torch.long)}
    else:
        tensors = {
            "latents_w": encoded.latents_w,
            "latents_l": encoded.latents_l,
            "micro_cond": encoded.micro_cond,
            "text_index": encoded.text_index,
            "row_ids": torch.tensor(encoded.row_ids, dtype=torch.long),
            **{f"text.{name}": value for name, value in encoded.text.items()},
        }
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    publish(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def read_shard_metadata(path: Path) -> dict[str, Any]:
    """A shard's positions, prompts, corrupt rows and row ids; ``CacheReadError`` if unsound."""
    try:
        with safe_open(path, framework="pt") as shard:
            metadata = shard.metadata() or {}
            names = list(shard.keys())
            return {
                "positions": range(*json.loads(metadata["positions"])),
                "prompts": json.loads(metadata["prompts"]),
                "corrupt_rows": [tuple(pair) for pair in json.loads(metadata["corrupt_rows"])],
                "row_ids": shard.get_tensor("row_ids"),
                "text_index": (
                    shard.get_tensor("text_index")
                    if "text_index" in names
                    else torch.zeros(0, dtype=torch.long)
                ),
                "text_names": [
                    name.removeprefix("text.") for name in names if name.startswith("text.")
                ],
            }
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise CacheReadError(f"cannot read the latent cache shard {path}: {err}") from None


def write_empty_prompt(folder: Path, empty_text: dict[str, torch.Tensor]) -> None:
    tensors = {name: value.contiguous() for name, value in empty_text.items()}
    publish(folder / EMPTY_PROMPT, lambda temporary: save_file(tensors, temporary))


def write_index(folder: Path, shard_names: list[str], record: dict[str, Any]) -> None:
    """Gather the shards' metadata into ``index.safetensors`` and ``manifest.json``.

    ``record`` (key parts, source, tie counts) goes into the manifest as it is. Prompts are
    deduplicated across shards, so ``text_index`` in the index points into the manifest's
    ``prompts``; a row's text tensors still live in its own shard.
    """
    prompts: dict[str, int] = {}
    row_ids, text_index, shard_rows, corrupt_rows = [], [], [], []
    text_names: list[str] = []
    for name in shard_names:
        shard = read_shard_metadata(folder / name)
        to_global = torch.tensor(
            [prompts.setdefault(prompt, len(prompts)) for prompt in shard["prompts"]],
            dtype=torch.long,
        )
        row_ids.append(shard["row_ids"])
        text_index.append(to_global[shard["text_index"]])
        shard_rows.append(len(shard["row_ids"]))
        corrupt_rows.extend(shard["corrupt_rows"])
        text_names = text_names or shard["text_names"]
    index = {
        "row_ids": torch.cat(row_ids),
        "text_index": torch.cat(text_index),
        "shard_rows": torch.tensor(shard_rows, dtype=torch.long),
    }
    publish(folder / INDEX, lambda temporary: save_file(index, temporary))
    manifest = {
        "format": CACHE_FORMAT,
        **record,
        "num_pairs": int(index["shard_rows"].sum()),
        "shards": shard_names,
        "text_names": text_names,
        "prompts": list(prompts),
        "corrupt_rows": sorted(corrupt_rows),
    }
    publish(folder / MANIFEST, lambda temporary: temporary.write_text(json.dumps(manifest)))
    for leftover in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        leftover.unlink(missing_ok=True)
