"""The on-disk latent cache: a dataset's encodings, computed once per model, view and data.

Layout: ``<cache root>/<key>/`` holds ``manifest.json`` (format, key parts, distinct prompts,
row ids, tie and corrupt-row counts, shard names), ``pairs-NNNNN.safetensors`` (latents_w,
latents_l, micro_cond, text_index per row), ``prompts-NNNNN.safetensors`` (one ``text.<name>``
tensor per encoder output, per distinct prompt) and ``empty_prompt.safetensors`` (the
encoding of "" for caption dropout). Shards keep any one file small.

A cache is built in a hidden temporary folder beside its final place, synced to disk and
renamed into it only when complete, so a crash never leaves a half-written folder that a
later run trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alignkit.data.encoded import EncodedPairs
from alignkit.durable import fsync_path, fsync_tree

CACHE_FORMAT = 1
CACHE_DIR_ENV = "ALIGNKIT_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/alignkit/latents"
MANIFEST = "manifest.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
SHARD_BYTES = 256 * 2**20


class CacheReadError(RuntimeError):
    """A cache folder exists but cannot be read back (edited, truncated, old format)."""


def cache_root(configured: str | None) -> Path:
    """``data.cache_dir`` if set, else ``$ALIGNKIT_CACHE_DIR``, else the default under ``~``."""
    return Path(configured or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def cache_key(parts: dict[str, Any]) -> str:
    """A short hash of everything that decides the cached tensors."""
    canonical = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _shard_rows(tensors: dict[str, torch.Tensor]) -> int:
    row_bytes = sum(value[0].nelement() * value.element_size() for value in tensors.values())
    return max(1, SHARD_BYTES // max(row_bytes, 1))


def _write_shards(folder: Path, prefix: str, tensors: dict[str, torch.Tensor]) -> list[str]:
    rows = len(next(iter(tensors.values())))
    step = _shard_rows(tensors)
    names = []
    for number, start in enumerate(range(0, rows, step)):
        name = f"{prefix}-{number:05d}.safetensors"
        shard = {
            key: value[start : start + step].clone(memory_format=torch.contiguous_format)
            for key, value in tensors.items()
        }
        save_file(shard, folder / name)
        names.append(name)
    return names


def _read_shards(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    shards = [load_file(folder / name) for name in names]
    return {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}


def save_encoded(encoded: EncodedPairs, folder: Path, record: dict[str, Any]) -> None:
    """Write ``encoded`` (and ``record``, kept in the manifest) atomically as ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        pair_shards = _write_shards(
            staging,
            "pairs",
            {
                "latents_w": encoded.latents_w,
                "latents_l": encoded.latents_l,
                "micro_cond": encoded.micro_cond,
                "text_index": encoded.text_index,
            },
        )
        text = {f"text.{name}": value for name, value in encoded.text.items()}
        prompt_shards = _write_shards(staging, "prompts", text)
        save_file(
            {k: v.contiguous() for k, v in encoded.empty_text.items()}, staging / EMPTY_PROMPT
        )
        manifest = {
            "format": CACHE_FORMAT,
            **record,
            "num_pairs": encoded.num_pairs,
            "row_ids": encoded.row_ids,
            "prompts": encoded.prompts,
            "pair_shards": pair_shards,
            "prompt_shards": prompt_shards,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest))
        fsync_tree(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / MANIFEST).is_file():
                raise
        fsync_path(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_encoded(folder: Path) -> tuple[EncodedPairs, dict[str, Any]]:
    """The cached pairs and the manifest; ``CacheReadError`` if the folder is not a sound cache."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {manifest.get('format')}, expected {CACHE_FORMAT}")
        pairs = _read_shards(folder, manifest["pair_shards"])
        text = _read_shards(folder, manifest["prompt_shards"])
        encoded = EncodedPairs(
            latents_w=pairs["latents_w"],
            latents_l=pairs["latents_l"],
            micro_cond=pairs["micro_cond"],
            text_index=pairs["text_index"],
            prompts=manifest["prompts"],
            text={name.removeprefix("text."): value for name, value in text.items()},
            empty_text=load_file(folder / EMPTY_PROMPT),
            row_ids=manifest["row_ids"],
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, SafetensorError) as err:
        raise CacheReadError(f"cannot read the latent cache {folder}: {err}") from None
    return encoded, manifest
