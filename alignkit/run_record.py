"""The run folder's ``.hydra/`` record, written by alignkit once the run is accepted.

Hydra would write ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` before any alignkit
code runs, so a resume refused for changed settings would already have overwritten the
record of the run it refused (``conf/config.yaml`` sets ``hydra.output_subdir: null``).
Writing them here, after the check, leaves a refused run folder byte-for-byte as it was.
``read_run_record`` reads a folder's config back for the tools that work on finished runs
(evaluation, export), completed with the settings added since it was written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from alignkit.config import EvalConfig, ModelConfig, TrainerConfig, register_configs

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


def read_run_record(config_file: Path, overrides: list[str]) -> DictConfig:
    """A run folder's stored config with ``overrides``, its model, trainer and eval sections
    completed from today's schemas: a folder written before a setting existed (say
    ``model.lora.load``) gets that setting's default instead of failing on the missing key."""
    register_configs()  # the resolvers the stored config refers to (alignkit_asset)
    cfg = OmegaConf.merge(OmegaConf.load(config_file), OmegaConf.from_dotlist(overrides))
    for section, schema in (
        ("model", ModelConfig),
        ("trainer", TrainerConfig),
        ("eval", EvalConfig),
    ):
        try:
            completed = OmegaConf.merge(OmegaConf.structured(schema), cfg.get(section) or {})
        except OmegaConfBaseException as error:
            first_line = str(error).splitlines()[0]
            raise ValueError(
                f"{config_file}: its {section} settings do not fit this alignkit "
                f"({first_line}); fix or drop that key in the file, or pass a valid "
                f"{section}.<key>=<value>"
            ) from None
        with open_dict(cfg):
            cfg[section] = completed
    return cfg
