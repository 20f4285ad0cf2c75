"""Build the tiny world's pretrained text-to-image model (deterministic, CPU, about 53 minutes
on 2 cores; docs/tiny_world.md gives what it reaches).

    python experiments/tiny_world/build.py [--out alignkit/tinyworld/assets/base_model] [--work DIR]

Stages, each cached in ``--work`` so an interrupted build resumes where it stopped (the UNet
stage also saves its progress every ``--save-every`` steps and goes on from there):
1. render the training set from the renderer (train prompts x seeds, 64x64 RGB), which the
   model sees at 32x32 (2x2 average): the VAE then needs one downsampling stage, which a CPU
   trains in minutes, and the latents stay 16x16x4 (the judge upsamples what it scores);
2. train a VAE (AutoencoderKL, 32x32x3 <-> 16x16x4) on whole images, deterministic (the
   posterior mode, MSE): the world is simple enough that the KL term only slows learning;
3. encode the set to latents and set the VAE's scaling factor to 1 / std(latents);
4. train a UNet and a CLIP text encoder (with the real CLIP tokenizer, 16 tokens) jointly on
   epsilon prediction (Min-SNR-5 weighted), with 10% empty prompts for classifier-free guidance
   and an EMA (5000 steps);
5. refine that run's EMA weights with a fresh optimiser and a warm restart of the learning rate
   (2000 steps at a lower peak): held-out fidelity climbs while the learning rate decays, and the
   first run ends still climbing;
6. save a diffusers folder in half precision that a plain ``StableDiffusionPipeline.from_pretrained(
   folder)`` loads in float32, like any model on the hub (the samples below come from that
   reload);
7. report how often held-out samples show the prompted shape and colour (the judge);
8. sample preference pairs from the model for the train prompts (two seeds per pair), label
   them with the judge and write them in the Pick-a-Pic schema (``data=tiny_pairs``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from alignkit.models.tokenizer import offline_clip_tokenizer, write_clip_tokenizer_files
from alignkit.tinyworld import fidelity_ok, heldout_prompts, judge_scores, render, train_prompts
from alignkit.tinyworld.pairs import pairs_from_images, write_parquet_folder

IMAGE_SIZE = 32  # the model's resolution; renders are 64x64
TOKENS = 16
TEXT_WIDTH = 64
UNET_LR = 1e-3  # our choice: 3e-4 left blobs after 1800 steps; 1e-3 beat 5e-4 on 3000 + 1000
REFINE_LR = 4e-4  # our choice: the first run ends still improving; the restart adds ~0.2 fidelity


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def render_training_set(work: Path, per_prompt: int) -> tuple[np.ndarray, list[str]]:
    cache = work / "renders.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        return data["images"], [str(p) for p in data["prompts"]]
    prompts = [p for p in train_prompts() for _ in range(per_prompt)]
    images = np.stack([render(p, seed) for seed, p in enumerate(tqdm(prompts, desc="render"))])
    np.savez(cache, images=images, prompts=np.array(prompts))
    return images, prompts


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """64x64 uint8 renders -> the model's 32x32 pixels in [-1, 1]."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.nn.functional.avg_pool2d(pixels, 2)


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        # 4 and 8 channels per group (SD's VAE has 4): with one channel per group GroupNorm
        # normalises every channel over the image and the image's colours are lost.
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def train_vae(work: Path, images: np.ndarray, steps: int, seed: int) -> AutoencoderKL:
    vae = make_vae()
    cache = work / "vae.safetensors"
    if cache.exists():
        vae.load_state_dict(load_file(cache))
        return vae
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    pixels = to_pixels(images)
    bar = tqdm(range(steps), desc="vae")
    for step in bar:
        batch = pixels[torch.randint(0, len(pixels), (32,), generator=generator)]
        reconstruction = vae.decode(vae.encode(batch).latent_dist.mode()).sample
        loss = (reconstruction - batch).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
        bar.set_postfix(mse=f"{loss.item():.4f}")
    save_file(vae.state_dict(), cache)
    return vae


@torch.no_grad()
def encode_latents(work: Path, vae: AutoencoderKL, images: np.ndarray) -> torch.Tensor:
    cache = work / "latents.safetensors"
    if cache.exists():
        return load_file(cache)["latents"]
    vae.eval()
    pixels = to_pixels(images)
    latents = torch.cat(
        [vae.encode(pixels[i : i + 256]).latent_dist.mode() for i in range(0, len(pixels), 256)]
    )
    save_file({"latents": latents.contiguous()}, cache)
    return latents


def make_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=TOKENS,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def make_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),  # our choice: 4.1M, a step 0.54x of 64/128/128
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def make_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
    )


def min_snr_weight(alphas_cumprod: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction, min(SNR, gamma) / SNR (Hang et al.
    2023, gamma 5 from the paper): the nearly clean timesteps, which only polish texture, stop
    dominating, so the noisy ones that decide the object's shape train faster."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr


def save_progress(
    path: Path,
    step: int,
    params: list[torch.nn.Parameter],
    ema: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Everything the UNet stage needs to go on from ``step`` exactly, written atomically."""
    tensors = {"step": torch.tensor(step), "generator": generator.get_state()}
    for index, (parameter, shadow) in enumerate(zip(params, ema)):
        tensors[f"param.{index}"] = parameter.detach()
        tensors[f"ema.{index}"] = shadow
        for key, value in optimizer.state.get(parameter, {}).items():
            tensors[f"adam.{index}.{key}"] = value
    scratch = path.with_suffix(".partial")
    save_file({key: value.contiguous() for key, value in tensors.items()}, scratch)
    scratch.replace(path)


def load_progress(
    path: Path,
    params: list[torch.nn.Parameter],
    ema: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Restore what ``save_progress`` wrote; the step to go on from (0 without a file)."""
    if not path.exists():
        return 0
    tensors = load_file(path)
    with torch.no_grad():
        for index, (parameter, shadow) in enumerate(zip(params, ema)):
            parameter.copy_(tensors[f"param.{index}"])
            shadow.copy_(tensors[f"ema.{index}"])
            prefix = f"adam.{index}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                optimizer.state[parameter] = state
    generator.set_state(tensors["generator"])
    return int(tensors["step"])


@dataclass(frozen=True)
class DenoiserRun:
    """One training run of the UNet and text encoder: from random weights, or refining the
    weights of an earlier run with a fresh optimiser and a schedule of its own."""

    name: str  # its cache file in --work
    steps: int
    peak_lr: float
    warmup_steps: int
    seed: int
    ema_decay: float
    ema_warmup: bool  # ramp the EMA's decay up from 0: a random start is not worth keeping

    def weights(self, work: Path) -> Path:
        """Where the run's final (EMA) weights are cached."""
        return work / f"{self.name}.safetensors"


def load_denoiser(path: Path) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    unet, text_encoder = make_unet(), make_text_encoder()
    state = load_file(path)
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    text_encoder.load_state_dict(
        {k[5:]: v for k, v in state.items() if k.startswith("text.")}, strict=False
    )
    return unet, text_encoder


def save_denoiser(path: Path, unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> None:
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"text.{k}": v for k, v in text_encoder.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, path)


def train_denoiser(
    work: Path,
    latents: torch.Tensor,
    prompts: list[str],
    run: DenoiserRun,
    save_every: int,
    start_from: Path | None = None,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Train (or load from the cache) ``run``, starting from ``start_from``'s weights if given."""
    cache = run.weights(work)
    if cache.exists():
        return load_denoiser(cache)
    if start_from is None:
        unet, text_encoder = make_unet(), make_text_encoder()
    else:
        unet, text_encoder = load_denoiser(start_from)
    tokenizer = offline_clip_tokenizer(max_length=TOKENS)
    vocabulary = sorted(set(prompts)) + [""]
    token_ids = tokenizer(
        vocabulary, padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    prompt_index = torch.tensor([vocabulary.index(p) for p in prompts])
    empty_index = len(vocabulary) - 1
    alphas = make_scheduler().alphas_cumprod
    generator = torch.Generator().manual_seed(run.seed)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    # fused AdamW, foreach clipping and EMA: one call over all tensors, not one per tensor
    optimizer = torch.optim.AdamW(params, lr=run.peak_lr, weight_decay=1e-2, fused=True)
    ema = [p.detach().clone() for p in params]
    progress = work / f"{run.name}_progress_{run.steps}.safetensors"
    start = load_progress(progress, params, ema, optimizer, generator)
    bar = tqdm(range(start, run.steps), desc=run.name, initial=start, total=run.steps)
    for step in bar:
        rows = torch.randint(0, len(latents), (32,), generator=generator)
        x0 = latents[rows]
        ids = prompt_index[rows].clone()
        ids[torch.rand(32, generator=generator) < 0.1] = empty_index
        t = torch.randint(0, 1000, (32,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        text = text_encoder(token_ids[ids])[0]
        error = (unet(x_t, t, text).sample - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (min_snr_weight(alphas[t]) * error).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        warmup = min(1.0, (step + 1) / run.warmup_steps)
        for group in optimizer.param_groups:
            cosine = 0.5 * (1 + math.cos(math.pi * step / run.steps))
            group["lr"] = run.peak_lr * warmup * (0.1 + 0.9 * cosine)
        optimizer.step()
        decay = run.ema_decay
        if run.ema_warmup:
            decay = min(decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % save_every == 0 and step + 1 < run.steps:
            save_progress(progress, step + 1, params, ema, optimizer, generator)
    with torch.no_grad():
        for shadow, p in zip(ema, params):
            p.copy_(shadow)
    save_denoiser(cache, unet, text_encoder)
    progress.unlink(missing_ok=True)
    return unet, text_encoder


def save_pipeline(
    out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel
) -> StableDiffusionPipeline:
    """Save in half precision (the package stays small) and reload what ships, in float32."""
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=offline_clip_tokenizer(max_length=TOKENS),
        unet=unet,
        scheduler=DDIMScheduler.from_config(make_scheduler().config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(torch.float16).save_pretrained(out, safe_serialization=True)
    load_text_encoder_in_float32(out / "text_encoder")
    write_slow_tokenizer_files(out / "tokenizer")
    return StableDiffusionPipeline.from_pretrained(out)


def load_text_encoder_in_float32(folder: Path) -> None:
    """diffusers loads the half-precision UNet and VAE in float32, but transformers loads a
    text encoder in the dtype its config names: name float32 so the three agree."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_slow_tokenizer_files(folder: Path) -> None:
    """Ship ``vocab.json`` + ``merges.txt`` (1.5 MB, read by every transformers version)
    instead of the 3.6 MB ``tokenizer.json`` that transformers 5 writes."""
    (folder / "tokenizer.json").unlink(missing_ok=True)
    write_clip_tokenizer_files(folder)


@torch.no_grad()
def sample(
    pipeline: StableDiffusionPipeline, prompts: list[str], guidance: float, seed: int
) -> np.ndarray:
    """uint8 images, one per prompt; image i uses the seed ``seed + i``."""
    images = []
    for start in tqdm(range(0, len(prompts), 32), desc="sample"):
        chunk = prompts[start : start + 32]
        generator = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        output = pipeline(
            chunk,
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            num_inference_steps=20,
            guidance_scale=guidance,
            generator=generator,
            output_type="np",
        ).images
        images.append((output * 255).round().astype(np.uint8))
    return np.concatenate(images)


def held_out_fidelity(pipeline: StableDiffusionPipeline, seeds: int, guidance: float) -> dict:
    prompts = [p for p in heldout_prompts() for _ in range(seeds)]
    images = sample(pipeline, prompts, guidance, seed=0)
    return {
        "fidelity": float(fidelity_ok(images, prompts).mean()),
        "judge_mean": float(judge_scores(images, prompts).mean()),
        "samples": len(prompts),
        "guidance": guidance,
    }


def write_model_pairs(
    out: Path, pipeline: StableDiffusionPipeline, per_prompt: int, guidance: float
) -> dict:
    """Pairs of the base model's own samples for the train prompts, labelled by the judge."""
    prompts = [p for p in train_prompts() for _ in range(per_prompt)]
    first = sample(pipeline, prompts, guidance, seed=1_000_000)
    second = sample(pipeline, prompts, guidance, seed=2_000_000)
    table = pairs_from_images(prompts, first, second)
    write_parquet_folder(table, out)
    ties = float((table["label_0"] == 0.5).mean())
    return {"pairs": len(table), "ties": ties, "guidance": guidance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("alignkit/tinyworld/assets/base_model"))
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/alignkit/tiny_build")
    parser.add_argument("--per-prompt", type=int, default=128)
    parser.add_argument("--vae-steps", type=int, default=1000)
    # our choice: 5000 + 2000 reach 0.73 held-out fidelity in 41 minutes (tiny_world.md)
    parser.add_argument("--unet-steps", type=int, default=5000)
    parser.add_argument("--refine-steps", type=int, default=2000)
    parser.add_argument("--save-every", type=int, default=200, help="UNet steps between saves")
    parser.add_argument("--pairs-out", type=Path, default=Path("alignkit/tinyworld/assets/pairs"))
    parser.add_argument("--pairs-per-prompt", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    log("rendering")
    images, prompts = render_training_set(args.work, args.per_prompt)
    log(f"{len(images)} images; training the VAE")
    vae = train_vae(args.work, images, args.vae_steps, args.seed)
    latents = encode_latents(args.work, vae, images)
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    log(f"latents {tuple(latents.shape)}, scaling factor {vae.config.scaling_factor:.4f}")
    scaled = latents * vae.config.scaling_factor
    first = DenoiserRun("denoiser", args.unet_steps, UNET_LR, 200, args.seed, 0.999, True)
    train_denoiser(args.work, scaled, prompts, first, args.save_every)
    refine = DenoiserRun(
        "denoiser_refined", args.refine_steps, REFINE_LR, 100, args.seed + 1, 0.998, False
    )
    unet, text_encoder = train_denoiser(
        args.work,
        scaled,
        prompts,
        refine,
        args.save_every,
        start_from=first.weights(args.work),
    )
    pipeline = save_pipeline(args.out, vae, unet, text_encoder)
    log(f"saved {args.out}; sampling held-out prompts")
    report = {f"heldout_cfg{g}": held_out_fidelity(pipeline, 8, g) for g in (1.0, 3.0, 5.0)}
    log(json.dumps(report))
    report["pairs"] = write_model_pairs(
        args.pairs_out, pipeline, args.pairs_per_prompt, args.guidance
    )
    (args.out / "build_report.json").write_text(json.dumps(report, indent=1))
    log(json.dumps(report))


if __name__ == "__main__":
    main()
