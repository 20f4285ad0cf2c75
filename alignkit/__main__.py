"""``python -m alignkit [group=option ...] [key=value ...]``: the Hydra entry point."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from alignkit.algorithms.reference_errors import ReferenceWriteError
from alignkit.checkpoint import CheckpointWriteError
from alignkit.config import register_configs
from alignkit.models import ModelLoadError
from alignkit.preemption import Preempted
from alignkit.registry import UnknownNameError
from alignkit.trainer import ConfigMismatchError

register_configs()

#: Errors that describe bad input (a path, a setting, a data file) in their message: shown as
#: one line, since a stack trace would only bury the fix. HYDRA_FULL_ERROR=1 shows the trace.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    UnknownNameError,
    ModelLoadError,
    ConfigMismatchError,
    FloatingPointError,
    CheckpointWriteError,
    ReferenceWriteError,
)


@hydra.main(version_base=None, config_path="pkg://alignkit.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from alignkit.app import run

    try:
        run(cfg)
    except Preempted as stop:
        print(f"alignkit: {stop}", file=sys.stderr)
        stop.hand_on()  # e.g. submitit's handler: requeues the job and exits on its own
        sys.exit(stop.exit_code)
    except USER_ERRORS as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = str(error)
        if isinstance(error, OmegaConfBaseException):  # drop OmegaConf's full_key/type lines
            message = message.splitlines()[0]
        print(f"alignkit: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
