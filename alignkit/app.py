"""Build a run from a composed config and train it: what ``python -m alignkit`` does."""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import time
from collections.abc import Mapping
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
from alignkit.environment import record_environment
from alignkit.evaluation import evaluate, results_table
from alignkit.models import build_backbone
from alignkit.parts import check_parts, collect_parts
from alignkit.rewards import build_configured_reward
from alignkit.run_record import read_run_record, write_run_record
from alignkit.sinks import build_sinks
from alignkit.tinyworld.assets import asset_path
from alignkit.trainer import Trainer, TrainResult, refuse_changed_settings
from alignkit.watch import build_watch, check_watch_settings

log = logging.getLogger(__name__)

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: what `accelerate launch` exports from `accelerate config` or its --mixed_precision flag
_ACCELERATE_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
#: the VAE of every supported family maps 8x8 pixels to one latent
_VAE_FACTOR = 8


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


def agree_on_run_dir(run_dir: Path, accelerator: Accelerator) -> Path:
    """The main process's run folder, for every process: a clock-named output_dir is
    resolved by each process on its own and may differ between them."""
    if accelerator.num_processes == 1:
        return run_dir
    from accelerate.utils import broadcast_object_list

    agreed = Path(broadcast_object_list([str(run_dir)])[0])
    if agreed != run_dir:
        log.warning(
            "process %d uses the main process's run folder %s", accelerator.process_index, agreed
        )
    return agreed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_mixed_precision(configured: str | None, environ: Mapping[str, str]) -> str:
    """``trainer.mixed_precision`` when set, else what `accelerate launch` exported, else no."""
    if configured is not None:
        precision, source = configured, "trainer.mixed_precision"
    else:
        precision = environ.get(_ACCELERATE_PRECISION_ENV, "no").lower()
        source = f"{_ACCELERATE_PRECISION_ENV} (from accelerate config/launch)"
    if precision not in _DTYPES:
        raise ValueError(f"unknown {source}={precision!r}; choose one of {sorted(_DTYPES)}")
    return precision


def build_accelerator(cfg: DictConfig) -> Accelerator:
    precision = resolve_mixed_precision(cfg.trainer.mixed_precision, os.environ)
    if precision == "fp16" and (cfg.trainer.cpu or not torch.cuda.is_available()):
        raise ValueError(
            "mixed precision fp16 (trainer.mixed_precision, or accelerate's setting when that "
            "is unset) needs a GPU; on the CPU set trainer.mixed_precision=no or bf16"
        )
    accelerator = Accelerator(mixed_precision=precision, cpu=cfg.trainer.cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise ValueError(
            f"launched as {launched} processes but accelerate set up {accelerator.num_processes}"
            " (each would train alone); without GPUs add trainer.cpu=true, which runs them "
            "over gloo on the CPU"
        )
    return accelerator


def check_resolution(resolution: int) -> None:
    """The VAE needs a multiple of 8 pixels; name the nearest sizes that work."""
    if resolution <= 0 or resolution % _VAE_FACTOR:
        below = max(_VAE_FACTOR, resolution - resolution % _VAE_FACTOR)
        above = below + _VAE_FACTOR if below < resolution else below
        nearest = f"{below} or {above}" if below != above else f"{below}"
        raise ValueError(
            f"model.resolution={resolution} is not a multiple of {_VAE_FACTOR} (the VAE "
            f"works on {_VAE_FACTOR}x{_VAE_FACTOR}-pixel blocks); use {nearest}"
        )


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
    check_resolution(cfg.model.resolution)
    _check_data_kind(cfg.algo.name, cfg.data.kind)
    check_parts(collect_parts(cfg))
    check_watch_settings(cfg.eval)
    accelerator = build_accelerator(cfg)
    run_dir = agree_on_run_dir(resolve_run_dir(cfg), accelerator)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.output_dir = str(run_dir)
        cfg.trainer.mixed_precision = accelerator.mixed_precision  # as resolved, for the record
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    # before anything is written: a refused resume leaves the run folder as it was
    refuse_changed_settings(run_dir / "checkpoints", run_dir, config)
    seed_everything(cfg.seed)
    if accelerator.is_main_process:
        write_run_record(run_dir, cfg)
        record_environment(run_dir, accelerator.device)
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
    cfg = read_run_record(config_file, overrides)
    accelerator = build_accelerator(cfg)
    backbone = build_backbone(cfg.model, accelerator.device, _DTYPES[accelerator.mixed_precision])
    contents = load_checkpoint(checkpoints[-1])
    if contents.sharded:
        raise ValueError(
            f"{checkpoints[-1]} holds FSDP / DeepSpeed shards, which only the same launch reads "
            f"back; evaluate the gathered weights once the run ends ({run_dir / 'final'})"
        )
    backbone.load_trainable_state_dict(contents.trainable)
    if contents.ema:  # trainer.ema: the run's result is the average
        copy_average_into(backbone.unet, contents.ema)
    return evaluate(backbone, cfg.eval, run_dir)
