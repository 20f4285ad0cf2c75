"""``python -m alignkit [group=option ...] [key=value ...]``: the Hydra entry point."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from alignkit.config import register_configs

register_configs()


@hydra.main(version_base=None, config_path="pkg://alignkit.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from alignkit.app import run

    run(cfg)


if __name__ == "__main__":
    main()
