"""The run folder's ``.hydra/`` record, written by alignkit once the run is accepted.

Hydra would write ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` before any alignkit
code runs, so a resume refused for changed settings would already have overwritten the
record of the run it refused (``conf/config.yaml`` sets ``hydra.output_subdir: null``).
Writing them here, after the check, leaves a refused run folder byte-for-byte as it was.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

RECORD_FOLDER = ".hydra"


def write_run_record(run_dir: Path, cfg: DictConfig) -> None:
    """``config.yaml`` (the job's settings) always; ``hydra.yaml`` and ``overrides.yaml``
    (the command line) when Hydra launched the job, in the layout Hydra itself uses."""
    from hydra.core.hydra_config import HydraConfig

    folder = run_dir / RECORD_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    if HydraConfig.initialized():
        hydra = HydraConfig.instance().cfg
        OmegaConf.save(hydra, folder / "hydra.yaml")
        OmegaConf.save(hydra.hydra.overrides.task, folder / "overrides.yaml")
