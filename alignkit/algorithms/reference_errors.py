"""The reference errors of Diffusion-DPO and -RPO, live or computed before training.

The reference half of the DPO and RPO objectives is the frozen model's denoising error on the
same noised pair as the policy's. It never depends on the trained weights, only on the
micro-batch and its noise, so when each micro-batch's timesteps and noise are drawn from its index
(``batch_noise``) the reference errors of a whole run can be computed ahead, in the same
forward passes the training steps would make, and each training step runs the policy alone:
a third less UNet work per step (forward, reference forward, backward become forward,
backward). The total work moves to the start of the run, and shrinks when several
micro-batches share a pass (the TRL library's ``precompute_ref_log_probs`` does the same for
language-model DPO).

Each process computes the micro-batches it will train on and stores them in the run folder
(or ``algo.reference_dir``, which runs with the same deciding settings share: a sweep over
beta or the learning rate computes them once), ``<first>-<last>.safetensors`` per ``CHUNK``
micro-batches beside ``settings.json``. A crash loses at most one file's worth, a stop signal
(``trainer.preempt_signals``) nothing, and a resumed run reads what is there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from alignkit.algorithms.errors import noise_and_timesteps, pair_errors
from alignkit.config import AlgoConfig, flatten_config, setting_differences
from alignkit.data.batch import PairBatch
from alignkit.data.seeding import derived_generator
from alignkit.durable import publish
from alignkit.models import Backbone, unet_identity

if TYPE_CHECKING:
    from alignkit.trainer import FitPlan

log = logging.getLogger(__name__)

#: algo.reference: how the reference model's errors are obtained
REFERENCE_CHOICES = ("live", "precomputed")
FOLDER = "reference_errors"
#: the settings the folder's errors were computed with: other runs may share them if equal
SETTINGS_FILE = "settings.json"
#: micro-batches per file: what a crash during the computation can lose at most (our choice)
CHUNK = 256
#: settings that decide a micro-batch's reference errors besides model.* and data.*; the
#: process count, accumulation and passes' stacking only change which micro-batches share a
#: pass, which moves the errors by float rounding, so runs differing in them may share a folder
DECIDING = ("seed", "trainer.batch_size", "trainer.mixed_precision")
#: model.* and data.* settings that do not (the trained adapters, speed and memory switches)
NOT_DECIDING = (
    "model.name",
    "model.lora.",
    "model.gradient_checkpointing",
    "model.sampling_speedups",
    "model.reference_device",
    "data.name",
    "data.cache_dir",
    "data.num_workers",
    "data.encode_batch_size",
    "data.max_corrupt_fraction",
)


def batch_noise(
    backbone: Backbone, like: torch.Tensor, seed: int, index: int, one_timestep: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps and noise of micro-batch ``index``, drawn from ``(seed, index)`` alone, so that
    computing its reference errors ahead and training on it later see the same draw."""
    generator = derived_generator("reference-noise", seed, index)
    return noise_and_timesteps(backbone, like, generator, one_timestep)


def reference_settings(plan: FitPlan, backbone: Backbone, one_timestep: bool) -> dict[str, Any]:
    """What decides the reference errors of micro-batch ``i``: the base UNet's files, the data's
    files and settings, the batch size, the seed, the precision and how timesteps are drawn
    (one per pair for DPO, one per batch for RPO), JSON-ready."""
    flat = flatten_config(plan.config)
    settings = {
        key: value
        for key, value in flat.items()
        if (key.startswith(("model.", "data.")) and not key.startswith(NOT_DECIDING))
        or key in DECIDING
    }
    settings["unet_files"] = unet_identity(backbone.cfg)
    settings["data_files"] = getattr(plan.batches, "source_identity", None)
    settings["timesteps"] = "one per batch" if one_timestep else "one per pair"
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def claim_folder(folder: Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` in a new folder; refuse a folder written with other settings."""
    file = folder / SETTINGS_FILE
    if not file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(settings, indent=1, sort_keys=True)
        publish(file, lambda temporary: temporary.write_text(text))
        return
    try:
        stored = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{file} is unreadable ({err}); delete {folder} to compute its errors again"
        ) from None
    changed = setting_differences(stored, settings)
    if changed:
        shown = "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
        raise ValueError(
            f"the reference errors in {folder} were computed with other settings ({shown}); "
            "name another algo.reference_dir, or delete the folder to compute them again"
        )


@dataclass
class ReferenceConfig(AlgoConfig):
    """The reference settings of the algorithms that compare against the base model."""

    reference: str = "live"
    reference_micro_batches: int = 1  # with reference=precomputed: micro-batches per pass
    reference_dir: str | None = None  # with reference=precomputed: None = the run folder's


class ReferenceSide:
    """Where an offline algorithm's policy and reference errors of a pair batch come from:
    ``live``, a reference pass in every step with ``t`` and ``eps`` from the trainer's stream,
    or ``precomputed``, the reference errors computed ahead with ``t`` and ``eps`` drawn from
    the micro-batch's index."""

    def __init__(self, cfg: ReferenceConfig, backbone: Backbone, one_timestep: bool) -> None:
        if cfg.reference not in REFERENCE_CHOICES:
            raise ValueError(
                f"algo.reference={cfg.reference!r} is unknown; choose live (the reference pass "
                "in every step) or precomputed (all reference errors computed before training)"
            )
        if cfg.reference_micro_batches < 1:
            raise ValueError(
                f"algo.reference_micro_batches={cfg.reference_micro_batches} must be at least 1 "
                "(micro-batches per forward pass when the reference errors are computed ahead)"
            )
        self.cfg = cfg
        self.backbone = backbone
        self.one_timestep = one_timestep
        self.precomputed: ReferenceErrors | None = None
        self.seed = 0

    def before_fit(self, plan: FitPlan) -> None:
        """With ``algo.reference=precomputed``: the reference errors of every micro-batch left."""
        if self.cfg.reference != "precomputed":
            return
        folder = Path(self.cfg.reference_dir or Path(plan.run_dir) / FOLDER).expanduser()
        claim_folder(folder, reference_settings(plan, self.backbone, self.one_timestep))
        self.seed = plan.seed
        self.precomputed = ReferenceErrors(folder, self.one_timestep)
        self.precomputed.compute(self.backbone, plan, self.cfg.reference_micro_batches)

    def pair_errors(
        self, batch: PairBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(model_w, model_l, ref_w, ref_l)`` of ``batch``."""
        backbone, like = self.backbone, batch.latents_w
        if self.cfg.reference == "live":
            t, noise = noise_and_timesteps(backbone, like, generator, self.one_timestep)
            return pair_errors(backbone, batch, t, noise)
        if self.precomputed is None:
            raise RuntimeError(
                "algo.reference=precomputed: the reference errors are not computed yet; "
                "Trainer.fit does that first (or call Trainer.prepare_algorithm())"
            )
        ref_w, ref_l = self.precomputed.lookup(batch.index)
        t, noise = batch_noise(backbone, like, self.seed, batch.index, self.one_timestep)
        model_w, model_l, _, _ = pair_errors(backbone, batch, t, noise, with_reference=False)
        return model_w, model_l, ref_w.to(model_w.device), ref_l.to(model_w.device)


class ReferenceWriteError(OSError):
    """The reference errors could not be stored (a full disk): the files before stay whole."""


class ReferenceErrors:
    """``(ref_w, ref_l)`` per micro-batch index, read from and written to ``folder``."""

    def __init__(self, folder: str | Path, one_timestep: bool = False) -> None:
        self.folder = Path(folder)
        self.one_timestep = one_timestep
        self.errors: dict[int, torch.Tensor] = {}  # index -> [2, B]: winners, losers

    def lookup(self, index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None or index not in self.errors:
            raise RuntimeError(
                f"algo.reference=precomputed has no reference errors for micro-batch {index}: "
                "they are computed by Trainer.fit (Trainer.prepare_algorithm) for the steps up "
                "to trainer.max_steps, from a batch source whose batches carry their index"
            )
        ref_w, ref_l = self.errors[index]
        return ref_w, ref_l

    def read(self) -> None:
        """Load every readable file in the folder; an unreadable one is removed (its
        micro-batches are computed again)."""
        for file in sorted(self.folder.glob("*.safetensors")):
            try:
                chunk = load_file(file)
                indices, errors = chunk["indices"].tolist(), chunk["errors"]
            except (OSError, KeyError, SafetensorError) as err:
                log.warning("unreadable reference errors %s (%s); computing them again", file, err)
                file.unlink(missing_ok=True)
                continue
            self.errors.update(zip(indices, errors.unbind(0)))

    def compute(self, backbone: Backbone, plan: FitPlan, per_pass: int = 1) -> None:
        """The reference errors of the micro-batches ``plan`` has left, where not stored yet.

        ``per_pass`` micro-batches share one forward pass. The groups are fixed slices of the
        whole run's list, so a resumed run groups (and rounds) exactly as an uninterrupted one.
        """
        self.read()
        groups = sorted(
            {
                position // per_pass
                for position in range(plan.start, len(plan.indices))
                if plan.indices[position] not in self.errors
            }
        )
        if not groups:
            return
        log.info("computing the reference errors of %d passes ahead", len(groups))
        pending: list[int] = []
        rows: list[torch.Tensor] = []
        with tqdm(
            total=sum(len(plan.indices[g * per_pass : (g + 1) * per_pass]) for g in groups),
            desc="reference errors",
            disable=not plan.progress_bar,
        ) as bar:
            try:
                for group in groups:
                    members = plan.indices[group * per_pass : (group + 1) * per_pass]
                    rows.extend(self._errors_of(backbone, plan, members).unbind(0))
                    pending.extend(members)
                    bar.update(len(members))
                    if len(pending) >= CHUNK:
                        full, full_rows, pending, rows = pending, rows, [], []
                        self._store(full, full_rows)
                    if plan.stop_requested():
                        log.info("asked to stop; storing the reference errors computed so far")
                        break
            finally:  # a stop, Ctrl-C or a crash keeps every pass that finished
                if pending:
                    self._store(pending, rows)

    def _errors_of(self, backbone: Backbone, plan: FitPlan, indices: list[int]) -> torch.Tensor:
        """``[len(indices), 2, B]``: the reference errors of these micro-batches, one pass."""
        batches = [plan.batches.batch(index) for index in indices]
        draws = [
            batch_noise(backbone, b.latents_w, plan.seed, i, self.one_timestep)
            for b, i in zip(batches, indices)
        ]
        together = PairBatch.cat(batches).to(backbone.device)
        t, noise = torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])
        with plan.autocast():
            _, _, ref_w, ref_l = pair_errors(backbone, together, t, noise, with_policy=False)
        errors = torch.stack([ref_w, ref_l]).float().cpu()  # [2, n * B]
        return errors.view(2, len(indices), -1).transpose(0, 1)

    def _store(self, indices: list[int], rows: list[torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        file = self.folder / f"{min(indices):010d}-{max(indices):010d}.safetensors"
        tensors = {"indices": torch.tensor(indices), "errors": torch.stack(rows)}
        try:
            publish(file, lambda temporary: save_file(tensors, temporary))
        except OSError as err:
            raise ReferenceWriteError(
                f"could not store reference errors in {self.folder} ({err}); free space there "
                "or use algo.reference=live (the files already stored are kept)"
            ) from err
        self.errors.update(zip(indices, rows))
