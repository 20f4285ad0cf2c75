"""Diffusion-RPO (Gu et al. 2024, arXiv 2406.06382; docs/algorithms.md, "Diffusion-RPO").

Diffusion-DPO over every winner x loser pair of the local batch, each pair weighted by how
similar its two samples are in CLIP's multi-modal embedding space. The paper's code was never
published (its repository holds a README only): this is a reconstruction from the paper and the
same authors' LLM-RPO code; the two open choices are flags (``embedding``, ``weight_placement``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alignkit import hub
from alignkit.algorithms.reference_errors import ReferenceConfig, ReferenceSide
from alignkit.algorithms.registry import ALGORITHMS
from alignkit.algorithms.rpo_embeddings import EMBEDDINGS, PairEmbeddings, clip_identity
from alignkit.data.batch import PairBatch
from alignkit.data.sharded import ShardedPairs
from alignkit.losses import dpo_logits, implicit_accuracy, rpo_loss, rpo_weights
from alignkit.models import Backbone
from alignkit.parts import Part
from alignkit.rewards.clip import ClipModel

if TYPE_CHECKING:
    from alignkit.trainer import FitPlan

PLACEMENTS = ("outside", "inside")


@dataclass
class RPOConfig(ReferenceConfig):
    beta: float = 5000.0
    tau: float = 0.5
    embedding: str = "both"  # text | image | both
    weight_placement: str = "outside"  # outside | inside
    # an open_clip folder (open_clip_config.json + open_clip_model.safetensors), or an open_clip
    # model name when clip_checkpoint (a local file, or owner/repo/file on the hub) is set
    clip_path: str | None = None
    clip_checkpoint: str | None = None
    clip_batch_size: int = 64


def _check(cfg: RPOConfig) -> None:
    problems = []
    if cfg.tau <= 0:
        problems.append(f"algo.tau={cfg.tau} (must be positive; the paper uses 0.5)")
    if cfg.embedding not in EMBEDDINGS:
        problems.append(f"algo.embedding={cfg.embedding!r} (choose text, image or both)")
    if cfg.weight_placement not in PLACEMENTS:
        problems.append(f"algo.weight_placement={cfg.weight_placement!r} (outside or inside)")
    if cfg.clip_batch_size < 1:
        problems.append(f"algo.clip_batch_size={cfg.clip_batch_size} (must be at least 1)")
    if problems:
        raise ValueError("invalid RPO settings: " + "; ".join(problems))


def clip_parts(cfg: RPOConfig) -> list[Part]:
    """RPO's CLIP: a local folder, or a model name whose weights file may be on the hub."""
    what = "the CLIP of RPO's pair weights"
    if cfg.clip_checkpoint:
        return [Part(what, "algo.clip_checkpoint", cfg.clip_checkpoint, "file")]
    if cfg.clip_path and hub.is_local(cfg.clip_path):
        return [Part(what, "algo.clip_path", cfg.clip_path, "model")]
    return []


def load_clip(cfg: RPOConfig) -> tuple[ClipModel, str]:
    """The configured CLIP and its identity; a missing one names the settings to fix."""
    if not cfg.clip_path:
        raise ValueError(
            "algo=rpo needs a CLIP for its pair weights and none is set: pass "
            "algo.clip_path=<local open_clip folder>, or algo.clip_path=ViT-H-14 "
            "algo.clip_checkpoint=<weights file> (model=sd15 and model=sdxl set "
            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K)"
        )
    path = cfg.clip_path
    try:
        checkpoint = (
            hub.resolve_file(cfg.clip_checkpoint, "algo.clip_checkpoint")
            if cfg.clip_checkpoint
            else None
        )
        return ClipModel.load(path, checkpoint), clip_identity(
            path, None if checkpoint is None else str(checkpoint)
        )
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(
            f"RPO needs a CLIP model for its pair weights and could not load one: {err}. Set "
            "algo.clip_path to a local open_clip folder, or algo.clip_path=<open_clip model name> "
            "with algo.clip_checkpoint=<local weights file>"
        ) from None


@ALGORITHMS.register("rpo")
class DiffusionRPO:
    """One t for the whole batch (all N x N pairs compare errors at the same noise level),
    one eps per pair shared by its winner and loser; the reference is the base model."""

    data_kind = "pairs"
    config_class = RPOConfig
    required_parts = staticmethod(clip_parts)

    def __init__(self, cfg: RPOConfig, backbone: Backbone) -> None:
        _check(cfg)
        self.cfg = cfg
        self.backbone = backbone
        clip, identity = load_clip(cfg)
        self.embeddings = PairEmbeddings(
            clip.to(backbone.device), identity, backbone, cfg.embedding, cfg.clip_batch_size
        )
        self.reference = ReferenceSide(cfg, backbone, one_timestep=True)

    def prepare(self, batches) -> None:
        """Embed the whole cached dataset once (or load it); streaming data embeds per batch."""
        store = getattr(batches, "store", None)
        if isinstance(store, ShardedPairs):
            self.embeddings.prepare(store)

    def before_fit(self, plan: FitPlan) -> None:
        self.reference.before_fit(plan)

    def loss(self, batch: PairBatch, generator: torch.Generator):
        model_w, model_l, ref_w, ref_l = self.reference.pair_errors(batch, generator)
        emb_w, emb_l = (e.to(model_w.device) for e in self.embeddings(batch))
        cfg = self.cfg
        loss = rpo_loss(
            model_w, model_l, ref_w, ref_l, emb_w, emb_l, cfg.beta, cfg.tau, cfg.weight_placement
        )
        diagonal = dpo_logits(model_w.detach(), model_l.detach(), ref_w, ref_l, cfg.beta)
        weights = rpo_weights(emb_w, emb_l, cfg.tau)
        return loss, {
            "implicit_acc": implicit_accuracy(diagonal).item(),
            "rpo_weight_diag": weights.diagonal().mean().item(),
            "model_mse_w": model_w.mean().item(),
            "model_mse_l": model_l.mean().item(),
            "ref_mse_w": ref_w.mean().item(),
            "ref_mse_l": ref_l.mean().item(),
        }
