"""CLIP embeddings of preference pairs for Diffusion-RPO, computed once per dataset and CLIP.

RPO weights every winner x loser pair of a batch by the similarity of their multi-modal
embeddings: the CLIP text embedding of the caption and the CLIP image embedding of the image.
They never change during training, so with the latent cache on they are computed once, from the
cached latents decoded by the VAE (the training view as the model sees it), and stored beside
the latent cache as ``clip-<CLIP identity>.safetensors``. Without a latent cache (streaming
data, synthetic batches) each batch is embedded when it arrives.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alignkit.data.batch import PairBatch
from alignkit.data.sharded import ShardedPairs
from alignkit.durable import publish
from alignkit.models import Backbone
from alignkit.rewards.clip import CONFIG_FILE, WEIGHTS_FILE, ClipModel

log = logging.getLogger(__name__)

EMBEDDINGS = ("text", "image", "both")


def clip_identity(path: str, checkpoint: str | None) -> str:
    """A short hash that changes when the CLIP model could have changed (cache key part)."""
    if checkpoint is not None:
        stat = Path(checkpoint).stat()
        parts = [path, str(Path(checkpoint).resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    else:
        folder = Path(path)
        weights = (folder / WEIGHTS_FILE).stat()
        config = (folder / CONFIG_FILE).read_text()
        parts = [config, str(weights.st_size), str(weights.st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def combine(text: torch.Tensor, image: torch.Tensor, embedding: str) -> torch.Tensor:
    """The per-sample embedding RPO compares: ``normalize(text) + normalize(image)``, or one."""
    if embedding == "text":
        return F.normalize(text, dim=-1)
    if embedding == "image":
        return F.normalize(image, dim=-1)
    if embedding == "both":
        return F.normalize(text, dim=-1) + F.normalize(image, dim=-1)
    raise ValueError(f"algo.embedding={embedding!r} is unknown; choose text, image or both")


class PairEmbeddings:
    """Winner and loser embeddings ``[B, D]`` of a batch, from the table or computed now."""

    def __init__(
        self,
        clip: ClipModel,
        identity: str,
        backbone: Backbone,
        embedding: str,
        batch_size: int = 64,
    ) -> None:
        if embedding not in EMBEDDINGS:
            raise ValueError(f"algo.embedding={embedding!r} is unknown; choose text, image or both")
        self.clip = clip.eval().requires_grad_(False)
        self.identity = identity
        self.backbone = backbone
        self.embedding = embedding
        self.batch_size = batch_size
        self.table: dict[str, torch.Tensor] | None = None
        self.rows: dict[int, int] = {}
        self.text_index: torch.Tensor | None = None

    # -- computing ---------------------------------------------------------------------------
    @torch.no_grad()
    def _images(self, latents: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, len(latents), self.batch_size):
            pixels = self.backbone.decode_latents(latents[start : start + self.batch_size])
            chunks.append(self.clip.image_features(pixels.to(self.clip.mean.device)).float().cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def _texts(self, prompts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            chunks.append(self.clip.text_features(prompts[start : start + self.batch_size]))
        return torch.cat([chunk.float().cpu() for chunk in chunks])

    def _compute_table(self, encoded: ShardedPairs) -> dict[str, torch.Tensor]:
        log.info("RPO: embedding %d pairs with CLIP (once per dataset)", encoded.num_pairs)
        return {
            "text": self._texts(encoded.prompts),
            "image_w": self._images(encoded.latents_w),
            "image_l": self._images(encoded.latents_l),
        }

    # -- the table -----------------------------------------------------------------------------
    def prepare(self, encoded: ShardedPairs) -> None:
        """Load the dataset's table from beside its latent cache, computing it on a miss."""
        file = None
        if encoded.cache_folder is not None:
            file = Path(encoded.cache_folder) / f"clip-{self.identity}.safetensors"
        table = _read_table(file, encoded) if file is not None and file.is_file() else None
        if table is None:
            table = self._compute_table(encoded)
            if file is not None:
                _write_table(file, table)
        else:
            log.info("RPO: CLIP embeddings cache hit: %s", file)
        self.table = table
        self.text_index = encoded.text_index
        self.rows = {row_id: position for position, row_id in enumerate(encoded.row_ids)}

    def __call__(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.table is not None and batch.row_ids and all(r in self.rows for r in batch.row_ids):
            positions = torch.tensor([self.rows[r] for r in batch.row_ids])
            text = self.table["text"][self.text_index[positions]]
            image_w, image_l = self.table["image_w"][positions], self.table["image_l"][positions]
        else:
            text = self._texts(batch.prompts)
            image_w, image_l = self._images(batch.latents_w), self._images(batch.latents_l)
        return combine(text, image_w, self.embedding), combine(text, image_l, self.embedding)


def _read_table(file: Path, encoded: ShardedPairs) -> dict[str, torch.Tensor] | None:
    try:
        table = load_file(file)
        sizes = (len(table["text"]), len(table["image_w"]), len(table["image_l"]))
    except (OSError, KeyError, SafetensorError) as err:
        log.warning("RPO: unreadable CLIP embeddings %s (%s); computing them again", file, err)
        return None
    if sizes != (len(encoded.prompts), encoded.num_pairs, encoded.num_pairs):
        log.warning("RPO: CLIP embeddings %s do not fit the dataset; computing them again", file)
        return None
    return table


def _write_table(file: Path, table: dict[str, torch.Tensor]) -> None:
    """Published whole (``alignkit.durable.publish``): concurrent processes never read half."""
    tensors = {k: v.contiguous() for k, v in table.items()}
    try:
        publish(file, lambda temporary: save_file(tensors, temporary))
    except OSError as err:
        log.warning("RPO: could not store CLIP embeddings at %s (%s)", file, err)
