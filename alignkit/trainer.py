"""The one training loop, for every algorithm (nanoGPT-style: nothing hidden).

Per optimizer step: ``grad_accum`` micro-batches, each asked of the batch source by its
global index (so a resumed run sees exactly the data an uninterrupted one would), the
algorithm's loss, backward, clipping of the trainable parameters, an optimizer step and an
lr-schedule step. Checkpoints every ``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from alignkit.algorithms import Algorithm
from alignkit.checkpoint import (
    CheckpointContents,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.compiling import compiled
from alignkit.config import TrainerConfig
from alignkit.ema import WeightEMA
from alignkit.models import Backbone
from alignkit.optim import build_lr_schedule, build_optimizer
from alignkit.sinks import MetricsSink

log = logging.getLogger(__name__)

#: Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.log_every",
    "trainer.progress_bar",
    "trainer.compile",
    "trainer.compile_backend",
    "logger",
    "output_dir",
    "eval",
)


class BatchSource(Protocol):
    def batch(self, index: int) -> Any: ...


class ConfigMismatchError(RuntimeError):
    """Resuming a run folder with settings that would change the run."""


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    final_dir: Path


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the trainable parameters' gradients in place; return the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ, ignoring those a resume may change."""
    old, new = _flatten(saved), _flatten(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
            continue
        if old.get(key) != new.get(key):
            changed.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changed


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        backbone: Backbone,
        algorithm: Algorithm,
        batches: BatchSource,
        run_dir: str | Path,
        accelerator: Accelerator,
        seed: int,
        config: dict[str, Any],
    ) -> None:
        self.cfg = cfg
        self.backbone = backbone
        self.algorithm = algorithm
        self.batches = batches
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator
        self.config = config
        self.params = backbone.trainable_parameters()
        self.optimizer = build_optimizer(cfg, self.params)
        self.lr_schedule = build_lr_schedule(cfg, self.optimizer)
        wrapped_unet, self.optimizer = accelerator.prepare(backbone.unet, self.optimizer)
        if cfg.compile:
            wrapped_unet = compiled(wrapped_unet, cfg.compile_backend)
        backbone.unet_forward = wrapped_unet
        self.ema = WeightEMA(backbone.unet, cfg.ema_decay) if cfg.ema else None
        self.generator = torch.Generator().manual_seed(seed * 1000 + accelerator.process_index)
        self.step = 0
        self._phase = "idle"  # idle | accumulating | updating: what an interrupt would cut
        self._step_start_generator = self.generator.get_state()
        self._step_start_algorithm = self._algorithm_state()

    def _algorithm_state(self) -> dict[str, torch.Tensor]:
        """An algorithm that carries state across optimizer steps (e.g. SPO's transitions
        from a sampling round) exposes ``state_dict``/``load_state_dict``; it is
        checkpointed with the rest, so a resumed run repeats the uninterrupted one."""
        state_dict = getattr(self.algorithm, "state_dict", None)
        return dict(state_dict()) if state_dict is not None else {}

    def _load_algorithm_state(self, state: dict[str, torch.Tensor]) -> None:
        if hasattr(self.algorithm, "load_state_dict"):
            self.algorithm.load_state_dict(state)

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def resume(self) -> int:
        """Load the newest complete checkpoint of the run folder, if any; return its step."""
        checkpoints = list_checkpoints(self.checkpoint_root)
        if not checkpoints:
            return 0
        contents = load_checkpoint(checkpoints[-1])
        changed = config_differences(contents.config, self.config)
        if changed:
            raise ConfigMismatchError(
                f"{self.run_dir} holds a run with other settings ({'; '.join(changed)}). "
                "Resume it with the same settings, or pass a new output_dir=... to start afresh."
            )
        self.backbone.load_trainable_state_dict(contents.trainable)
        self.optimizer.load_state_dict(contents.optimizer)
        self.lr_schedule.load_state_dict(contents.lr_scheduler)
        self.generator.set_state(contents.generator_state)
        self._load_algorithm_state(contents.algorithm)
        if self.ema is not None:
            self.ema.load_state_dict(contents.ema)
        self.step = contents.step
        log.info("resumed from %s at step %d", checkpoints[-1], self.step)
        return self.step

    def save(self) -> Path:
        contents = CheckpointContents(
            step=self.step,
            trainable=self.backbone.trainable_state_dict(),
            optimizer=self.optimizer.state_dict(),
            lr_scheduler=self.lr_schedule.state_dict(),
            generator_state=self.generator.get_state(),
            config=self.config,
            algorithm=self._algorithm_state(),
            ema=self.ema.state_dict() if self.ema is not None else {},
        )
        return save_checkpoint(self.checkpoint_root, contents, self.cfg.keep_checkpoints)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's metrics."""
        accelerator, accum = self.accelerator, self.cfg.grad_accum
        sums: dict[str, float] = defaultdict(float)
        samples = 0
        self._step_start_generator = self.generator.get_state()
        self._step_start_algorithm = self._algorithm_state()
        self._phase = "accumulating"
        for micro in range(accum):
            index = (self.step * accum + micro) * accelerator.num_processes
            batch = self.batches.batch(index + accelerator.process_index).to(accelerator.device)
            last = micro == accum - 1
            sync = nullcontext() if last else accelerator.no_sync(self.backbone.unet_forward)
            with sync, accelerator.autocast():
                loss, metrics = self.algorithm.loss(batch, self.generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss.item()} at step {self.step}: lower trainer.lr, or use "
                        "trainer.mixed_precision=bf16 instead of fp16"
                    )
                accelerator.backward(loss / accum)
            sums["loss"] += loss.item() / accum
            for name, value in metrics.items():
                sums[name] += value / accum
            samples += len(batch)
        if self.cfg.max_grad_norm > 0:
            sums["grad_norm"] = clip_gradients(self.params, self.cfg.max_grad_norm)
        sums["lr"] = self.lr_schedule.get_last_lr()[0]
        self._phase = "updating"
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.step)
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._phase = "idle"
        sums["samples"] = samples * accelerator.num_processes
        return dict(sums)

    def fit(
        self,
        sinks: list[MetricsSink],
        after_step: Callable[[int], dict[str, float]] | None = None,
    ) -> TrainResult:
        """Train to ``max_steps``. ``after_step(step)``, if given, runs after each optimizer
        step (e.g. the periodic samples of ``alignkit.watch``); the scalars it returns are
        logged with that step's metrics, even on a step ``log_every`` skips."""
        resumed_from = self.step
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            desc="train",
            disable=not (self.cfg.progress_bar and self.accelerator.is_main_process),
            dynamic_ncols=True,
        )
        try:
            while self.step < self.cfg.max_steps:
                started = time.perf_counter()
                metrics = self.train_step()
                elapsed = time.perf_counter() - started
                metrics["samples_per_s"] = metrics.pop("samples") / max(elapsed, 1e-9)
                watched = after_step(self.step) if after_step is not None else {}
                metrics.update(watched)
                logged = self.step % self.cfg.log_every == 0 or watched
                if self.accelerator.is_main_process and logged:
                    for sink in sinks:
                        sink.log(self.step, metrics)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4f}", sps=f"{metrics['samples_per_s']:.1f}"
                )
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.max_steps:
                    self._save_on_main()
        except KeyboardInterrupt:
            self._save_after_interrupt()
            raise
        finally:
            bar.close()
        if self.ema is not None:
            self.ema.copy_to_weights()  # what final/ and the evaluation read from here on
        final_dir = self.run_dir / "final"
        if self.accelerator.is_main_process:
            self.backbone.save_final(final_dir)
        return TrainResult(self.step, resumed_from, final_dir)

    def _save_after_interrupt(self) -> None:
        """Roll an interrupted step back to its start (grads, random stream) and save, so
        resuming repeats that step exactly; an interrupt inside the optimizer update itself
        keeps the last periodic checkpoint instead."""
        if self._phase == "updating":
            log.warning("interrupted during an update: resume from the last checkpoint")
            return
        if self._phase == "accumulating":
            self.generator.set_state(self._step_start_generator)
            self._load_algorithm_state(self._step_start_algorithm)
            self.optimizer.zero_grad(set_to_none=True)
        log.warning("interrupted at step %d: saving a checkpoint before exiting", self.step)
        self._save_on_main()

    def _save_on_main(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.save()
