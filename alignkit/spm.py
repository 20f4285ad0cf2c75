"""Train a step-aware preference model (SPM) the SPO authors' way (docs/algorithms.md, "SPO").

For a preference pair (two images of one prompt, Pick-a-Pic labels): encode both images,
noise them with the SAME noise at a random ``t ~ U[0, T)``, let the frozen base UNet (CFG 5)
predict ``x0_hat`` from each, decode, score both with the SPM at ``t``, and minimise
PickScore's cross-entropy over the two logits (ties as 0.5/0.5). Held-out pairwise accuracy
is reported at several noise levels (the authors evaluate at t = 0, 251, 501, 701, 951).

    python -m alignkit.spm --out /tmp/spm --steps 400          # the tiny world (defaults)
    python -m alignkit.spm --model-path /models/sd15 --family sd --resolution 512 \
        --pairs /data/pickapic --clip /models/clip_folder --out /tmp/spm

On the tiny world the base model, the pairs and the starting CLIP (its pickscore, else its
clip) all come from ``alignkit/tinyworld/assets``. The result is a folder holding the SPM's
step-aware weights (``spm_adapter.safetensors``), the fine-tuned CLIP (when ``--train all``)
and ``metrics.json``; pass it as ``algo.spm_base=<out>/clip algo.spm_checkpoint=<out>``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from alignkit.config import ModelConfig
from alignkit.models import Backbone, build_backbone
from alignkit.models.text import default_micro_cond
from alignkit.rewards.clip import ClipModel
from alignkit.rewards.preference import preference_loss
from alignkit.rewards.spm import StepAwarePreferenceModel, tiny_world_spm_base
from alignkit.sampling import guided_prediction, split_prediction
from alignkit.tinyworld.assets import asset_path

log = logging.getLogger(__name__)

#: The authors' evaluation timesteps (step_aware_preference_model/trainer/tasks/spm_task.py).
EVAL_TIMESTEPS = (0, 251, 501, 701, 951)


@dataclass
class PairTensors:
    """Pairs as tensors: images in [0, 1] ``[N, 3, H, W]``, labels ``[N]``, prompts."""

    images_0: torch.Tensor
    images_1: torch.Tensor
    label_0: torch.Tensor
    label_1: torch.Tensor
    prompts: list[str]
    latents_0: torch.Tensor | None = None  # the VAE latents, once ``encode_pairs`` ran
    latents_1: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor) -> PairTensors:
        rows = index.tolist()
        encoded = self.latents_0 is not None
        return PairTensors(
            self.images_0[index],
            self.images_1[index],
            self.label_0[index],
            self.label_1[index],
            [self.prompts[i] for i in rows],
            self.latents_0[index] if encoded else None,
            self.latents_1[index] if encoded else None,
        )

    def concat(self, other: PairTensors) -> PairTensors:
        """These pairs followed by ``other``'s (neither encoded yet)."""
        if self.latents_0 is not None or other.latents_0 is not None:
            raise ValueError("concatenate pairs before encode_pairs, not after")
        return PairTensors(
            torch.cat([self.images_0, other.images_0]),
            torch.cat([self.images_1, other.images_1]),
            torch.cat([self.label_0, other.label_0]),
            torch.cat([self.label_1, other.label_1]),
            self.prompts + other.prompts,
        )


@torch.no_grad()
def encode_pairs(backbone: Backbone, pairs: PairTensors, batch_size: int = 64) -> PairTensors:
    """Encode every image once (the VAE is frozen), so training steps skip the encoder."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        chunks = [
            backbone.encode_images(images[i : i + batch_size].to(backbone.device) * 2 - 1).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks)

    pairs.latents_0, pairs.latents_1 = encode(pairs.images_0), encode(pairs.images_1)
    return pairs


def _decode(data: bytes, resolution: int) -> torch.Tensor:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def read_pairs(folder: str | Path, resolution: int, max_rows: int | None = None) -> PairTensors:
    """Every ``*.parquet`` under ``folder`` (Pick-a-Pic columns: caption, jpg_0, jpg_1,
    label_0, label_1)."""
    files = sorted(Path(folder).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no *.parquet files under {folder}; pass --pairs <folder>")
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    missing = {"caption", "jpg_0", "jpg_1", "label_0", "label_1"} - set(df.columns)
    if missing:
        raise ValueError(f"{folder} lacks the Pick-a-Pic columns {sorted(missing)}")
    return pairs_from_table(df if max_rows is None else df.iloc[:max_rows], resolution)


def pairs_from_table(df: pd.DataFrame, resolution: int) -> PairTensors:
    """A Pick-a-Pic-schema table decoded once into tensors at ``resolution``."""
    return PairTensors(
        torch.stack([_decode(b, resolution) for b in df["jpg_0"]]),
        torch.stack([_decode(b, resolution) for b in df["jpg_1"]]),
        torch.tensor(df["label_0"].to_numpy(), dtype=torch.float32),
        torch.tensor(df["label_1"].to_numpy(), dtype=torch.float32),
        [str(c) for c in df["caption"]],
    )


def split_by_prompt(pairs: PairTensors, heldout_fraction: float) -> tuple[PairTensors, PairTensors]:
    """Prompt-disjoint split: a prompt's pairs are all held out or all trained on (a stable
    hash of the prompt decides), so held-out accuracy measures generalisation to new prompts."""
    bucket = torch.tensor([zlib.crc32(p.encode()) % 1000 for p in pairs.prompts])
    heldout = bucket < int(heldout_fraction * 1000)
    return pairs.select(torch.nonzero(~heldout).flatten()), pairs.select(
        torch.nonzero(heldout).flatten()
    )


@torch.no_grad()
def predicted_x0_images(
    backbone: Backbone,
    latents: torch.Tensor,
    prompts: list[str],
    t: torch.Tensor,
    noise: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Noise the latents to ``t`` with ``noise``, predict ``x0_hat`` with the frozen base
    UNet under CFG, decode: what the SPM sees at step t."""
    latents = latents.to(backbone.device)
    t, noise = t.to(backbone.device), noise.to(backbone.device)
    x_t = backbone.add_noise(latents, noise, t)
    text = backbone.encode_guided(prompts)
    micro = default_micro_cond(2 * len(prompts), backbone.resolution, backbone.device)
    out = backbone.predict(torch.cat([x_t, x_t]), t.repeat(2), text, micro, reference=True)
    alpha_t = backbone.alphas_cumprod.to(backbone.device)[t]
    x0, _ = split_prediction(
        backbone.prediction_type, guided_prediction(out, guidance), x_t, alpha_t
    )
    return backbone.decode_latents(x0)


def pair_inputs(
    backbone: Backbone,
    pairs: PairTensors,
    t: torch.Tensor,
    generator: torch.Generator,
    guidance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images of each pair through ``predicted_x0_images`` with one shared noise."""
    if pairs.latents_0 is None:
        pairs = encode_pairs(backbone, pairs)
    noise = torch.randn(
        (len(pairs), *backbone_latent_shape(backbone)), generator=generator, dtype=torch.float32
    )
    both = predicted_x0_images(
        backbone,
        torch.cat([pairs.latents_0, pairs.latents_1]),
        pairs.prompts * 2,
        torch.cat([t, t]),
        torch.cat([noise, noise]),
        guidance,
    )
    return both.chunk(2)


def backbone_latent_shape(backbone: Backbone) -> tuple[int, int, int]:
    factor = 2 ** (len(backbone.vae.config.block_out_channels) - 1)
    size = backbone.resolution // factor
    return (backbone.vae.config.latent_channels, size, size)


def spm_loss(spm, image_0, image_1, pairs: PairTensors, t: torch.Tensor) -> torch.Tensor:
    scores = spm.score(torch.cat([image_0, image_1]), pairs.prompts * 2, torch.cat([t, t]))
    score_0, score_1 = scores.chunk(2)
    device = score_0.device
    return preference_loss(score_0, score_1, pairs.label_0.to(device), pairs.label_1.to(device))


@torch.no_grad()
def pairwise_accuracy(
    spm,
    backbone: Backbone,
    pairs: PairTensors,
    timestep: int,
    guidance: float,
    seed: int = 0,
    batch_size: int = 32,
) -> float:
    """The share of non-tied pairs whose preferred image the SPM scores higher at ``t``
    (fixed noise per pair, so models are compared on identical inputs)."""
    generator = torch.Generator().manual_seed(seed)
    decided = torch.nonzero(pairs.label_0 != pairs.label_1).flatten()
    correct = 0
    for start in range(0, len(decided), batch_size):
        chunk = pairs.select(decided[start : start + batch_size])
        t = torch.full((len(chunk),), timestep, dtype=torch.long)
        image_0, image_1 = pair_inputs(backbone, chunk, t, generator, guidance)
        scores = spm.score(torch.cat([image_0, image_1]), chunk.prompts * 2, torch.cat([t, t]))
        score_0, score_1 = scores.cpu().chunk(2)
        correct += int(((score_0 > score_1) == (chunk.label_0 > chunk.label_1)).sum())
    return correct / max(1, len(decided))


def evaluate(spm, backbone, pairs, guidance, timesteps=EVAL_TIMESTEPS) -> dict[str, float]:
    spm.eval()
    return {f"acc_t{t}": pairwise_accuracy(spm, backbone, pairs, t, guidance) for t in timesteps}


def train_spm(
    spm: StepAwarePreferenceModel,
    backbone: Backbone,
    train: PairTensors,
    steps: int,
    batch_size: int,
    lr: float,
    guidance: float,
    seed: int,
    trainable: str = "all",
    adapter_lr: float | None = None,
    log_every: int = 50,
) -> list[float]:
    """AdamW on the PickScore loss at random t; returns the loss curve. The zero-initialised
    step-aware parameters may get their own learning rate (``adapter_lr``)."""
    if trainable not in ("all", "adapter"):
        raise ValueError(f"--train {trainable!r}: choose 'all' or 'adapter'")
    names = set(spm.adapter_state_dict())
    named = list(spm._clip_module[0].named_parameters())
    adapter = [p for n, p in named if n in names]
    base = [p for n, p in named if n not in names] if trainable == "all" else []
    spm.requires_grad_(False)
    for p in adapter + base:
        p.requires_grad_(True)
    groups = [{"params": adapter, "lr": adapter_lr or lr}]
    if base:
        groups.append({"params": base, "lr": lr})
    params = adapter + base
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    spm.train()
    for step in range(steps):
        rows = torch.randint(0, len(train), (batch_size,), generator=generator)
        batch = train.select(rows)
        t = torch.randint(0, backbone.num_train_timesteps, (batch_size,), generator=generator)
        image_0, image_1 = pair_inputs(backbone, batch, t, generator, guidance)
        loss = spm_loss(spm, image_0, image_1, batch, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            log.info("step %d loss %.4f", step + 1, float(np.mean(losses[-log_every:])))
    return losses


def native_resolution(model_path: str | Path) -> int:
    """The pixel size a diffusers folder was trained at: UNet sample size x VAE factor."""
    folder = Path(model_path)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train a step-aware preference model (SPO).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model-path", default=None, help="default: the tiny world's model")
    parser.add_argument("--family", default="sd")
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's")
    parser.add_argument("--pairs", default=None, help="default: the tiny world's pairs")
    parser.add_argument("--clip", default=None, help="ClipModel folder; default: tiny pickscore")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)  # official: 16 per GPU
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--guidance", type=float, default=5.0)  # official cfg_scale
    parser.add_argument("--adapter-lr", type=float, default=1e-4)  # our choice
    parser.add_argument("--train", default="all", choices=("all", "adapter"))
    parser.add_argument("--heldout-fraction", type=float, default=0.15)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save-dtype", default="float32", choices=("float32", "float16"),
        help="the step-aware weights' file dtype (the shipped tiny SPM: float16)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_path = args.model_path or asset_path("base_model")
    args.resolution = args.resolution or native_resolution(model_path)
    model_cfg = ModelConfig(
        name="spm_base", family=args.family, path=model_path, resolution=args.resolution
    )
    backbone = build_backbone(model_cfg, device)
    backbone.unet.eval()
    pairs = read_pairs(args.pairs or asset_path("pairs"), args.resolution, args.max_rows)
    train, heldout = split_by_prompt(encode_pairs(backbone, pairs), args.heldout_fraction)
    log.info("%d training pairs, %d held-out pairs", len(train), len(heldout))
    clip_path = Path(args.clip) if args.clip else tiny_world_spm_base()
    spm = StepAwarePreferenceModel.from_clip(ClipModel.load(clip_path)).to(device)

    before = evaluate(spm, backbone, heldout, args.guidance)
    log.info("held-out accuracy at init (= the base CLIP): %s", before)
    losses = train_spm(
        spm, backbone, train, args.steps, args.batch_size, args.lr, args.guidance, args.seed,
        args.train, args.adapter_lr,
    )  # fmt: skip
    after = evaluate(spm, backbone, heldout, args.guidance)
    log.info("held-out accuracy after training: %s", after)

    out = Path(args.out)
    spm.save_adapter(out, getattr(torch, args.save_dtype))
    if args.train == "all":
        spm.save_base_clip(out / "clip")
    metrics = {
        "args": {key: str(value) for key, value in vars(args).items()},
        "base_clip": args.clip or f"the tiny world's {clip_path.name}",
        "train_pairs": len(train),
        "heldout_pairs": len(heldout),
        "steps": args.steps,
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "heldout_accuracy_base": before,
        "heldout_accuracy_spm": after,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


if __name__ == "__main__":
    main()
