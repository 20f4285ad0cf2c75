"""The one training loop, for every algorithm (nanoGPT-style: nothing hidden).

Per optimizer step: ``grad_accum`` micro-batches, each asked of the batch source by its
global index (so a resumed run sees exactly the data an uninterrupted one would), the
algorithm's loss, backward, clipping of the trainable parameters, an optimizer step and an
lr-schedule step. Checkpoints every ``checkpoint_every`` steps, at the end, and when a
watched signal (``trainer.preempt_signals``) asks the run to stop.
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
    RankState,
    checkpoint_config,
    list_checkpoints,
    load_checkpoint,
    load_rank_state,
    publish_checkpoint,
    staging_folder,
    start_checkpoint,
    write_rank_state,
)
from alignkit.compiling import compiled
from alignkit.config import TrainerConfig, flatten_config, setting_differences
from alignkit.ema import WeightEMA
from alignkit.models import Backbone
from alignkit.optim import build_lr_schedule, build_optimizer
from alignkit.preemption import Preempted, SignalWatch, parse_signals
from alignkit.sharding import (
    check_sharded_settings,
    gathered_state_dict,
    is_sharded,
    load_sharded_state,
    save_sharded_state,
)
from alignkit.sinks import MetricsSink

log = logging.getLogger(__name__)

#: Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.log_every",
    "trainer.progress_bar",
    "trainer.preempt_signals",
    "trainer.preempt_exit_code",
    "trainer.compile",
    "trainer.compile_backend",
    "model.sampling_speedups",
    "logger",
    "output_dir",
    "sweep_name",
    "eval",
)


class BatchSource(Protocol):
    def batch(self, index: int) -> Any: ...


def micro_batch_index(
    step: int, micro: int, grad_accum: int, process_index: int, num_processes: int
) -> int:
    """The batch-source index of micro-batch ``micro`` of optimizer step ``step`` on process
    ``process_index``: processes interleave, so every index is trained on exactly once."""
    return (step * grad_accum + micro) * num_processes + process_index


@dataclass
class FitPlan:
    """What an algorithm's optional ``before_fit(plan)`` may precompute for: the micro-batches
    this process trains on from step 0 to ``max_steps``, in order, of which the run (when
    resumed) still has ``indices[start:]`` to go."""

    batches: BatchSource
    indices: list[int]
    start: int
    seed: int
    run_dir: Path
    config: dict[str, Any]
    autocast: Callable[[], Any]
    progress_bar: bool
    #: true once the run is asked to stop (``trainer.preempt_signals``): keep what is done, return
    stop_requested: Callable[[], bool] = lambda: False


class ConfigMismatchError(RuntimeError):
    """Resuming a run folder with settings that would change the run."""


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    final_dir: Path


def clip_gradients(
    params: list[torch.nn.Parameter],
    max_norm: float,
    scaler: torch.amp.GradScaler | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """Clip the trainable parameters' gradients in place; return the true norm before clipping.

    Under fp16 the gradients hold ``loss_scale`` times their value until the scaler unscales
    them, so they are unscaled here first (the scaler then skips that at ``step``); clipping
    the scaled ones would bound the true norm by ``max_norm / scale`` instead.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


def refuse_changed_settings(checkpoint_root: Path, run_dir: Path, config: dict[str, Any]) -> None:
    """Raise ConfigMismatchError if the newest checkpoint was written with other settings."""
    checkpoints = list_checkpoints(checkpoint_root)
    if not checkpoints:
        return
    changed = config_differences(checkpoint_config(checkpoints[-1]), config)
    if changed:
        raise ConfigMismatchError(
            f"{run_dir} holds a run with other settings ({'; '.join(changed)}). "
            "Resume it with the same settings, or pass a new output_dir=... to start afresh."
        )


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ, ignoring those a resume may change."""
    return setting_differences(
        flatten_config(saved), flatten_config(current), ignore=RESUMABLE_CHANGES
    )


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
        self.seed = seed
        self.sharded = is_sharded(accelerator)
        if self.sharded:
            check_sharded_settings(backbone.cfg.finetune, cfg.ema)
        self.optimizer = build_optimizer(cfg, backbone.trainable_parameters())
        self.lr_schedule = build_lr_schedule(cfg, self.optimizer)
        wrapped_unet, self.optimizer = accelerator.prepare(backbone.unet, self.optimizer)
        self.wrapped_unet = wrapped_unet
        self.params = backbone.trainable_parameters()  # FSDP2 swaps in sharded parameters
        if cfg.compile:
            wrapped_unet = compiled(wrapped_unet, cfg.compile_backend)
        backbone.unet_forward = wrapped_unet
        self.ema = WeightEMA(backbone.unet, cfg.ema_decay) if cfg.ema else None
        self.generator = torch.Generator().manual_seed(seed * 1000 + accelerator.process_index)
        self.preempt_signals = parse_signals(cfg.preempt_signals)  # a bad name fails here
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
        refuse_changed_settings(self.checkpoint_root, self.run_dir, self.config)
        contents = load_checkpoint(checkpoints[-1])
        if contents.sharded:
            load_sharded_state(self.accelerator, checkpoints[-1])
        else:
            self.backbone.load_trainable_state_dict(contents.trainable)
            self.optimizer.load_state_dict(contents.optimizer)
        self.lr_schedule.load_state_dict(contents.lr_scheduler)
        rank = self.accelerator.process_index
        own = load_rank_state(checkpoints[-1], rank)
        if own is None:
            log.warning(
                "%s holds no state for process %d (written by %d process(es)): it starts "
                "fresh random streams",
                checkpoints[-1],
                rank,
                contents.num_processes,
            )
        else:
            self.generator.set_state(own.generator)
            self._load_algorithm_state(own.algorithm)
        if self.ema is not None:
            self.ema.load_state_dict(contents.ema)
        self.step = contents.step
        log.info("resumed from %s at step %d", checkpoints[-1], self.step)
        return self.step

    def save(self) -> Path:
        """Every process writes its own state, then the main process publishes the
        checkpoint; all processes must call this together."""
        accelerator, root = self.accelerator, self.checkpoint_root
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            start_checkpoint(root, self.step)
        accelerator.wait_for_everyone()
        own = RankState(self.generator.get_state(), self._algorithm_state())
        if self.sharded:
            save_sharded_state(accelerator, staging_folder(root, self.step))
        write_rank_state(root, self.step, accelerator.process_index, own)
        accelerator.wait_for_everyone()
        final = root / f"step_{self.step:08d}"
        if accelerator.is_main_process:
            contents = CheckpointContents(
                step=self.step,
                trainable={} if self.sharded else self.backbone.trainable_state_dict(),
                optimizer={} if self.sharded else self.optimizer.state_dict(),
                lr_scheduler=self.lr_schedule.state_dict(),
                config=self.config,
                num_processes=accelerator.num_processes,
                ema=self.ema.state_dict() if self.ema is not None else {},
                sharded=self.sharded,
            )
            final = publish_checkpoint(root, contents, self.cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return final

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's metrics."""
        accelerator, accum = self.accelerator, self.cfg.grad_accum
        sums: dict[str, float] = defaultdict(float)
        samples = 0
        self._step_start_generator = self.generator.get_state()
        self._step_start_algorithm = self._algorithm_state()
        self._phase = "accumulating"
        for micro in range(accum):
            index = micro_batch_index(
                self.step, micro, accum, accelerator.process_index, accelerator.num_processes
            )
            batch = self.batches.batch(index).to(accelerator.device)
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
            sums["grad_norm"] = clip_gradients(
                self.params,
                self.cfg.max_grad_norm,
                accelerator.scaler,
                getattr(self.optimizer, "optimizer", self.optimizer),  # unwrap accelerate's
            )
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

    def fit_plan(self, stop_requested: Callable[[], bool] | None = None) -> FitPlan:
        """The micro-batches this process has left to train on, and how to run them."""
        accelerator, accum = self.accelerator, self.cfg.grad_accum
        indices = [
            micro_batch_index(
                step, micro, accum, accelerator.process_index, accelerator.num_processes
            )
            for step in range(self.cfg.max_steps)
            for micro in range(accum)
        ]
        return FitPlan(
            batches=self.batches,
            indices=indices,
            start=min(self.step, self.cfg.max_steps) * accum,
            seed=self.seed,
            run_dir=self.run_dir,
            config=self.config,
            autocast=accelerator.autocast,
            progress_bar=self.cfg.progress_bar and accelerator.is_main_process,
            stop_requested=stop_requested or (lambda: False),
        )

    def prepare_algorithm(self, stop_requested: Callable[[], bool] | None = None) -> None:
        """Run the algorithm's ``before_fit(plan)``, if it has one, for the steps left: e.g.
        DPO or RPO with ``algo.reference=precomputed`` computes its reference errors there."""
        before_fit = getattr(self.algorithm, "before_fit", None)
        if before_fit is not None:
            before_fit(self.fit_plan(stop_requested))

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
        signals = SignalWatch(self.preempt_signals)
        try:
            with signals:
                self.prepare_algorithm(stop_requested=lambda: signals.received is not None)
                left = self.step < self.cfg.max_steps
                preempted = left and self._stop_requested(signals)  # during the preparation
                while not preempted and self.step < self.cfg.max_steps:
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
                    due = self.step % self.cfg.checkpoint_every == 0
                    if due or self.step == self.cfg.max_steps:
                        self.save()
                    if self.step < self.cfg.max_steps and self._stop_requested(signals):
                        if not due:
                            self.save()
                        preempted = True
                        break
            if preempted:
                raise Preempted(
                    signals.received.name if signals.received else "a signal to another process",
                    self.step,
                    self.cfg.preempt_exit_code,
                    signals.previous_handler,
                )
        except KeyboardInterrupt:
            if self.step > resumed_from:  # else the newest checkpoint (or none) is this state
                self._save_after_interrupt()
            raise
        finally:
            bar.close()
        if self.ema is not None:
            self.ema.copy_to_weights()  # what final/ and the evaluation read from here on
        final_dir = self.run_dir / "final"
        weights = gathered_state_dict(self.accelerator, self.wrapped_unet) if self.sharded else None
        if self.accelerator.is_main_process:
            self.backbone.save_final(final_dir, weights)
        return TrainResult(self.step, resumed_from, final_dir)

    def _stop_requested(self, signals: SignalWatch) -> bool:
        """Whether any process was signalled: all stop after the same step, or the others
        would wait forever for its gradients."""
        asked = signals.received is not None
        if self.accelerator.num_processes == 1:
            return asked
        flag = torch.tensor([float(asked)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

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
        self.save()
