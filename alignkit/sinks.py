"""Where logged metrics and images go: the run folder always (metrics.jsonl, image files),
plus wandb or TensorBoard on request."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from alignkit.config import LoggerConfig


class MetricsSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_image(self, step: int, name: str, image: Image.Image) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per logged step. On resume, lines past the resumed step are dropped
    so the file reads as one uninterrupted run. Images go next to the file, as
    ``<name>/step_XXXXXXXX.png`` (a resumed step overwrites its own)."""

    def __init__(self, path: str | Path, resume_step: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def log_image(self, step: int, name: str, image: Image.Image) -> None:
        folder = self.path.parent / name
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"step_{step:08d}.png")

    def close(self) -> None:
        self._file.close()


class WandbSink:
    """Offline mode unless an API key is configured, so a run never stops at a login prompt."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        mode = cfg.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            config=config,
            dir=str(run_dir),
            mode=mode,
            name=run_dir.name,
            resume="allow",
            id=_stable_run_id(run_dir),
        )
        self._image_type = wandb.Image

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def log_image(self, step: int, name: str, image: Image.Image) -> None:
        self._run.log({name: self._image_type(image)}, step=step)

    def close(self) -> None:
        self._run.finish()


class TensorBoardSink:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def log_image(self, step: int, name: str, image: Image.Image) -> None:
        self._writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _stable_run_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]


def build_sinks(
    cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], resume_step: int
) -> list[MetricsSink]:
    sinks: list[MetricsSink] = [JsonlSink(run_dir / "metrics.jsonl", resume_step)]
    if cfg.name == "wandb":
        sinks.append(WandbSink(cfg, run_dir, config))
    elif cfg.name == "tensorboard":
        sinks.append(TensorBoardSink(run_dir))
    elif cfg.name != "jsonl":
        raise ValueError(f"unknown logger {cfg.name!r}; choose jsonl, wandb or tensorboard")
    return sinks
