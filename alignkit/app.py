"""Build a run from a composed config and train it: what ``python -m alignkit`` does."""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf, open_dict

from alignkit.algorithms import ALGORITHMS, build_algorithm, needs_reward
from alignkit.checkpoint import list_checkpoints, load_checkpoint
from alignkit.config import validate_config
from alignkit.data import build_batches
from alignkit.ema import copy_average_into
from alignkit.evaluation import evaluate, results_table
from alignkit.models import build_backbone
from alignkit.parts import check_parts, collect_parts
from alignkit.rewards import build_configured_reward
from alignkit.sinks import build_sinks
from alignkit.tinyworld.assets import asset_path
from alignkit.trainer import Trainer, TrainResult
from alignkit.watch import build_watch, check_watch_settings

log = logging.getLogger(__name__)

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunResult:
    run_dir: Path
    train: TrainResult
    evaluation: dict | None = None


def resolve_run_dir(cfg: DictConfig) -> Path:
    """Hydra's output folder for this job (the sweep subfolder under -m), else output_dir."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.output_dir)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_accelerator(cfg: DictConfig) -> Accelerator:
    precision = cfg.trainer.mixed_precision
    if precision not in _DTYPES:
        raise ValueError(
            f"unknown trainer.mixed_precision={precision!r}; choose one of {sorted(_DTYPES)}"
        )
    if precision == "fp16" and (cfg.trainer.cpu or not torch.cuda.is_available()):
        raise ValueError("trainer.mixed_precision=fp16 needs a GPU; on the CPU use 'no' or 'bf16'")
    return Accelerator(mixed_precision=precision, cpu=cfg.trainer.cpu)


def _check_data_kind(algorithm_name: str, data_kind: str) -> None:
    wanted = ALGORITHMS.get(algorithm_name).data_kind
    if wanted != data_kind:
        raise ValueError(
            f"algo={algorithm_name} trains on {wanted} data but data.kind={data_kind!r}; "
            f"pick a data option of kind {wanted!r}"
        )


def _check_required(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"missing required setting(s): {', '.join(missing)}; "
            "pass them on the command line, e.g. data=pairs data.path=/my/pairs"
        )


def run(cfg: DictConfig) -> RunResult:
    """Train (or resume) the configured run and write its run folder."""
    validate_config(cfg)
    _check_required(cfg)
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.output_dir = str(run_dir)
    _check_data_kind(cfg.algo.name, cfg.data.kind)
    check_parts(collect_parts(cfg))
    check_watch_settings(cfg.eval)
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    seed_everything(cfg.seed)
    accelerator = build_accelerator(cfg)
    backbone = build_backbone(cfg.model, accelerator.device, _DTYPES[cfg.trainer.mixed_precision])
    batches = build_batches(
        cfg.data,
        backbone,
        resolution=cfg.model.resolution,
        batch_size=cfg.trainer.batch_size,
        seed=cfg.seed,
        device=accelerator.device,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
    )
    reward = build_configured_reward(cfg.reward) if needs_reward(cfg.algo.name) else None
    algorithm = build_algorithm(cfg.algo, backbone, reward=reward)
    prepare = getattr(algorithm, "prepare", None)  # optional: one pass over the data (RPO)
    if prepare is not None:
        prepare(batches)
    trainer = Trainer(
        cfg.trainer, backbone, algorithm, batches, run_dir, accelerator, cfg.seed, config
    )
    resumed = trainer.resume()
    sinks = build_sinks(cfg.logger, run_dir, config, resumed) if accelerator.is_main_process else []
    watch = build_watch(cfg.eval, backbone, sinks) if accelerator.is_main_process else None
    started = time.perf_counter()
    try:
        result = trainer.fit(sinks, after_step=watch)
    finally:
        for sink in sinks:
            sink.close()
    if accelerator.is_main_process:
        write_summary(run_dir, result, time.perf_counter() - started, accelerator.device)
    evaluation = None
    if evaluation_enabled(cfg) and accelerator.is_main_process:
        evaluation = evaluate(backbone, cfg.eval, run_dir)
        print(results_table(evaluation))
        print(f"image grid (base | aligned, same seeds): {run_dir / evaluation['grid']}")
    log.info("run folder: %s (final weights in %s)", run_dir, result.final_dir)
    return RunResult(run_dir, result, evaluation)


def evaluation_enabled(cfg: DictConfig) -> bool:
    """``eval.enabled``, where unset means: only for the tiny world's own model."""
    if cfg.eval.enabled is not None:
        return bool(cfg.eval.enabled)
    return cfg.model.init == "pretrained" and cfg.model.path == asset_path("base_model")


def peak_memory_mb(device: torch.device) -> float:
    """The accelerator's peak allocation, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_summary(run_dir: Path, result: TrainResult, seconds: float, device) -> None:
    """``summary.json``: what the ablation report compares besides metrics and evaluation."""
    summary = {
        "steps": result.step,
        "resumed_from": result.resumed_from,
        "train_seconds": seconds,
        "peak_memory_mb": peak_memory_mb(torch.device(device)),
        "device": str(device),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))


def evaluate_saved_run(run_dir: Path, overrides: list[str]) -> dict:
    """Evaluate a run folder's newest checkpoint (its EMA weights if it kept one);
    ``overrides`` are ``key=value`` settings."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no .hydra/config.yaml)")
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to evaluate")
    cfg = OmegaConf.merge(OmegaConf.load(config_file), OmegaConf.from_dotlist(overrides))
    accelerator = build_accelerator(cfg)
    backbone = build_backbone(cfg.model, accelerator.device, _DTYPES[cfg.trainer.mixed_precision])
    contents = load_checkpoint(checkpoints[-1], restore_rng=False)
    backbone.load_trainable_state_dict(contents.trainable)
    if contents.ema:  # trainer.ema: the run's result is the average
        copy_average_into(backbone.unet, contents.ema)
    return evaluate(backbone, cfg.eval, run_dir)
