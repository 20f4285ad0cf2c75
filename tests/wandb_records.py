"""Read an offline wandb run back: the history rows of its ``run-<id>.wandb`` file.

The file is wandb's 7-byte header followed by a LevelDB-style log (32 KiB blocks; each chunk
a 7-byte header: checksum, little-endian length, kind) whose records are protobuf
``Record`` messages. Parsed here with wandb's own protobuf classes, so the tests do not
depend on a reader API that wandb versions add and remove.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_file(run_dir: Path) -> Path:
    """The one offline run file that a run folder's WandbSink wrote."""
    found = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(found) == 1, f"expected one offline wandb run under {run_dir}, found {found}"
    return found[0]


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < HEADER:
            position += left_in_block
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        if kind == 0:  # zero padding up to the end of a block
            position += left_in_block
            continue
        pending += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def history(run_dir: Path) -> dict[int, dict]:
    """``{step: {key: value}}`` of every logged history row (nested keys joined by '.')."""
    rows: dict[int, dict] = {}
    for record in records(wandb_file(run_dir)):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {
            item.key or ".".join(item.nested_key): json.loads(item.value_json)
            for item in record.history.item
        }
        rows.setdefault(row["_step"], {}).update(row)
    return rows
