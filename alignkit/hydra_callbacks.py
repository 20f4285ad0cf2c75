"""Checks that must run before Hydra touches the disk (named in ``conf/config.yaml``).

Hydra creates the run folder (or the sweep folder) before it calls alignkit; a path that
names an existing file would end in a Hydra stack trace, so it is refused here, first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def blocking_file(folder: Path) -> Path | None:
    """The existing file (the folder itself or one of its parents) that stops ``folder``
    from being created as a directory, if any."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _refuse(key: str, folder: Path, blocker: Path) -> None:
    where = "is a file" if blocker == folder else f"lies under the file {blocker}"
    print(
        f"alignkit: error: {key}={folder} {where}, so it cannot be a run folder; "
        f"pass a folder path instead, e.g. {key}={folder.with_name(folder.name + '_run')}",
        file=sys.stderr,
    )
    sys.exit(2)


class RunFolderCheck(Callback):
    """Refuse ``output_dir`` / ``sweep_name`` paths that name a file, before Hydra's mkdir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir))
        blocker = blocking_file(folder)
        if blocker is not None:
            _refuse("output_dir", folder, blocker)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        blocker = blocking_file(folder)
        if blocker is not None:
            _refuse("hydra.sweep.dir", folder, blocker)
