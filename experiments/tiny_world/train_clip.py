"""Train the tiny world's CLIP contrastively on renders of the train prompts (CPU, minutes).

    python experiments/tiny_world/train_clip.py [--out alignkit/tinyworld/assets/clip]

Every step renders fresh images (one new seed per train prompt and image slot), so the model
never sees an image twice and cannot memorise renders. Several images of one prompt may share
a batch: text embeddings are computed once per distinct prompt, image->text is an ordinary
cross-entropy over the distinct prompts, and text->image spreads its target evenly over the
prompt's images. The run is deterministic for a fixed seed and thread count.

The report (``<out>/report.json``) gives retrieval on fresh renders of the HELD-OUT prompts,
whose texts and images the model never saw: how often an image's own prompt ranks first among
all 96 prompts and among the held-out ones, how often a prompt's best image is one of its own,
and which words (shape, colour, background) the top prompt gets right.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from alignkit.rewards.clip import WEIGHTS_FILE, ClipModel
from alignkit.tinyworld import all_prompts, heldout_prompts, parse_prompt, render, train_prompts
from alignkit.tinyworld.assets import asset_path

MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
MAX_LOGIT_SCALE = math.log(100.0)
EVAL_SEED_BASE = 1_000_000  # training seeds stay below it, so evaluation renders are fresh
EVAL_CHUNK = 256


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def render_batch(prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
    """Renderer samples as float ``[B, 3, 64, 64]`` in [0, 1]."""
    images = np.stack([render(prompt, seed) for prompt, seed in zip(prompts, seeds)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_index: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric CLIP loss when several images share a prompt.

    ``text_features`` holds one row per distinct prompt and ``prompt_index[i]`` is image i's
    row. Image->text is a plain cross-entropy; text->image targets are uniform over the
    prompt's images, so duplicates are never pushed apart as false negatives.
    """
    logits = logit_scale * image_features @ text_features.T
    image_to_text = F.cross_entropy(logits, prompt_index)
    matches = F.one_hot(prompt_index, len(text_features)).T.to(logits.dtype)
    targets = matches / matches.sum(-1, keepdim=True)
    text_to_image = -(targets * logits.T.log_softmax(-1)).sum(-1).mean()
    return (image_to_text + text_to_image) / 2


def training_step(
    clip: ClipModel,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    prompts: Sequence[str],
    max_grad_norm: float = 1.0,
) -> float:
    """One contrastive update on ``images`` and their (possibly repeated) prompts."""
    distinct = list(dict.fromkeys(prompts))
    prompt_index = torch.tensor([distinct.index(prompt) for prompt in prompts])
    loss = contrastive_loss(
        clip.image_features(images), clip.text_features(distinct), prompt_index, clip.logit_scale
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(clip.parameters(), max_grad_norm)
    optimizer.step()
    with torch.no_grad():
        clip.model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
    return loss.item()


def build_optimizer(clip: ClipModel, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on weight matrices only (not on gains, biases, embeddings, scale)."""
    decay, no_decay = [], []
    for name, parameter in clip.named_parameters():
        is_matrix = parameter.ndim >= 2 and "embedding" not in name
        (decay if is_matrix else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor: linear warmup, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def embed_images(clip: ClipModel, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
    chunks = [
        clip.image_features(
            render_batch(prompts[start : start + EVAL_CHUNK], seeds[start : start + EVAL_CHUNK])
        )
        for start in range(0, len(prompts), EVAL_CHUNK)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def retrieval_metrics(clip: ClipModel, prompts: list[str], renders_per_prompt: int) -> dict:
    """Retrieval on fresh renders of ``prompts``, against all 96 prompts and among ``prompts``."""
    everything = all_prompts()
    image_prompts = [prompt for prompt in prompts for _ in range(renders_per_prompt)]
    seeds = [EVAL_SEED_BASE + k for _ in prompts for k in range(renders_per_prompt)]
    similarity = embed_images(clip, image_prompts, seeds) @ clip.text_features(everything).T
    truth = torch.tensor([everything.index(prompt) for prompt in image_prompts])
    own_columns = torch.tensor([everything.index(prompt) for prompt in prompts])

    best_of_all = similarity.argmax(-1)
    best_of_own = own_columns[similarity[:, own_columns].argmax(-1)]
    best_image = similarity[:, own_columns].argmax(0)
    words = {"shape": [], "colour": [], "background": []}
    for predicted, true in zip(best_of_all.tolist(), truth.tolist()):
        guess, answer = parse_prompt(everything[predicted]), parse_prompt(everything[true])
        for word, hits in words.items():
            hits.append(getattr(guess, word) == getattr(answer, word))
    return {
        "prompts": len(prompts),
        "renders": len(image_prompts),
        "image_to_prompt_top1_all_prompts": _mean(best_of_all == truth),
        "image_to_prompt_top1_among_these_prompts": _mean(best_of_own == truth),
        "prompt_to_image_top1_among_these_renders": _mean(
            best_image // renders_per_prompt == torch.arange(len(prompts))
        ),
        "word_accuracy_all_prompts": {word: float(np.mean(hits)) for word, hits in words.items()},
    }


def world_token_ids(clip: ClipModel) -> list[int]:
    """Every token id the tiny world's prompts (and the empty prompt, and padding) use: the
    only token-embedding rows training ever moves, so the only ones worth shipping."""
    return clip.tokenize(all_prompts() + [""]).unique().tolist()


def _mean(hits: torch.Tensor) -> float:
    return round(hits.float().mean().item(), 4)


def train(args: argparse.Namespace) -> tuple[ClipModel, dict]:
    torch.manual_seed(args.seed)
    clip = ClipModel.from_config(MODEL_CFG)
    optimizer = build_optimizer(clip, args.lr, args.weight_decay)
    warmup = max(1, int(args.warmup_fraction * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, args.steps, warmup)
    )
    prompts = train_prompts()
    slots = args.images_per_prompt
    batch_prompts = [prompt for prompt in prompts for _ in range(slots)]
    losses, started = [], time.time()
    for step in range(args.steps):
        seeds = [step * slots + slot for _ in prompts for slot in range(slots)]
        losses.append(
            training_step(clip, optimizer, render_batch(batch_prompts, seeds), batch_prompts)
        )
        schedule.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            recent = float(np.mean(losses[-args.log_every :]))
            scale = clip.logit_scale.item()
            log(f"step {step + 1}/{args.steps} loss {recent:.4f} logit scale {scale:.1f}")
    curve = [
        round(float(np.mean(losses[start : start + args.log_every])), 4)
        for start in range(0, len(losses), args.log_every)
    ]
    return clip, {"train_seconds": round(time.time() - started, 1), "loss_curve": curve}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny world's CLIP (CPU).")
    parser.add_argument("--out", type=Path, default=Path(asset_path("clip")))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--images-per-prompt", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-fraction", type=float, default=0.05)
    parser.add_argument("--eval-renders-per-prompt", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.images_per_prompt < 1:
        parser.error(
            f"--steps and --images-per-prompt must be >= 1, got {args.steps}, "
            f"{args.images_per_prompt}"
        )
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    clip, training = train(args)
    clip.save(args.out, token_ids=world_token_ids(clip))
    shipped = ClipModel.from_folder(args.out).eval()  # evaluate what ships: fp16 weights
    renders = args.eval_renders_per_prompt
    report = {
        "command": "python experiments/tiny_world/train_clip.py",
        "args": reportable_args(args),
        "model_cfg": MODEL_CFG,
        "parameters": sum(parameter.numel() for parameter in shipped.parameters()),
        "weights_bytes": (args.out / WEIGHTS_FILE).stat().st_size,
        "open_clip_version": open_clip.__version__,
        "torch_version": torch.__version__,
        **training,
        "logit_scale": round(shipped.logit_scale.item(), 3),
        "heldout": retrieval_metrics(shipped, heldout_prompts(), renders),
        "train_prompts_fresh_renders": retrieval_metrics(shipped, train_prompts(), renders),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"held-out retrieval: {json.dumps(report['heldout'])}")
    log(f"wrote {args.out}")


def reportable_args(args: argparse.Namespace) -> dict[str, str]:
    """The arguments as strings, paths inside the working directory made relative to it, so
    that a committed report names no folder of the machine that wrote it."""
    cwd = Path.cwd().resolve()

    def portable(value: object) -> str:
        if isinstance(value, Path) and value.resolve().is_relative_to(cwd):
            return str(value.resolve().relative_to(cwd))
        return str(value)

    return {key: portable(value) for key, value in vars(args).items()}


if __name__ == "__main__":
    main()
