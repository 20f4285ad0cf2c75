"""Make a finished write survive a power cut before anything points at it.

A rename publishes a checkpoint or a cache folder; without an fsync of the files first, a
crash soon after can leave the new name pointing at empty or truncated files. Syncing the
folder that holds the entry makes the rename itself durable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: the name ending of a file being written; a folder's leftovers of a crash end so too
TEMPORARY_SUFFIX = ".partial"


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


def publish(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    Readers (another process, a rerun after a crash or a power cut) see either the previous
    file or the whole new one, never half of it.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        write(temporary)
        fsync_path(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(path.parent)
