"""Make a finished write survive a power cut before anything points at it.

A rename publishes a checkpoint or a cache folder; without an fsync of the files first, a
crash soon after can leave the new name pointing at empty or truncated files. Syncing the
folder that holds the entry makes the rename itself durable.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush one file (or, on POSIX, one folder's entries) to the disk."""
    if Path(path).is_dir() and os.name != "posix":
        return  # folders cannot be opened for fsync on Windows
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file under ``folder``, then the folders themselves, deepest first."""
    folder = Path(folder)
    folders = [folder]
    for entry in sorted(folder.rglob("*")):
        if entry.is_dir():
            folders.append(entry)
        else:
            fsync_path(entry)
    for directory in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_path(directory)
