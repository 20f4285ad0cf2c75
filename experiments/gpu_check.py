"""GPU check: LoRA DPO and SPO step time and peak memory at full SD1.5 and SDXL size.

The models are random-init copies of the real architectures (their configs are written out
below; nothing is downloaded), frozen weights in bf16 and LoRA weights in fp32, as alignkit
trains them. Each (model, algorithm, gradient checkpointing) variant trains a few optimizer
steps through alignkit's own Trainer; the JSON written to ``--out`` holds, per variant, the
median step time and the CUDA allocator's peak. DPO reads synthetic latents (what the latent
cache hands the Trainer); SPO runs its sampling rounds for real, with a tiny random
step-aware preference model standing in for the PickScore-sized one (so the SPM's own
cost is not in the figures).

With ``--diffusers <checkout>`` the SDXL DPO rows also run diffusers' Diffusion-DPO SDXL
example (``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py``) on the same
random model, written to a scratch folder, at the same batch, resolution, LoRA rank,
precision and gradient checkpointing; its steps also encode images and prompts, which
alignkit's latent cache does once.

    python -m experiments.gpu_check --out gpu_check.json [--diffusers ~/src/diffusers]
    python -m experiments.gpu_check --tiny --out /tmp/gpu_check_tiny.json   # CPU, seconds
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The published configs (stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0, unet/,
# vae/, text_encoder*/config.json), the keys that differ from the classes' defaults.
SD15_UNET = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
}
SDXL_UNET = {
    "sample_size": 128,
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "layers_per_block": 2,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
CLIP_L_TEXT = {  # SD1.5's text encoder, SDXL's first
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_BIGG_TEXT = {  # SDXL's second text encoder (OpenCLIP ViT-bigG/14)
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
DIFFUSERS_SCRIPT = "examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py"
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a blue vase"]


@dataclass(frozen=True)
class Variant:
    """One measured configuration; ``batch`` is pairs (DPO) or prompts per round (SPO)."""

    model: str  # sd15 | sdxl
    algo: str  # dpo | spo
    gradient_checkpointing: bool
    batch: int
    rank: int
    resolution: int
    spo: dict[str, int] | None = None  # k, steps, divert_start_step, ... (SPO only)


def full_variants() -> list[Variant]:
    """Batches that fit one 141 GB H200 without checkpointing; ranks and SPO pools from the
    recipes (conf/recipe: dpo_* r8, spo_sd15 r4 k4, spo_sdxl r64 k2 with inner steps)."""
    spo_sd15 = {"k": 4, "steps": 20, "divert_start_step": 4, "num_inner_steps": 0}
    spo_sdxl = {"k": 2, "steps": 20, "divert_start_step": 4, "num_inner_steps": 3}
    variants = []
    for checkpointing in (False, True):
        variants += [
            Variant("sd15", "dpo", checkpointing, batch=8, rank=8, resolution=512),
            Variant("sdxl", "dpo", checkpointing, batch=2, rank=8, resolution=1024),
            Variant("sd15", "spo", checkpointing, 4, 4, 512, {**spo_sd15, "train_batch": 10}),
            Variant("sdxl", "spo", checkpointing, 2, 64, 1024, {**spo_sdxl, "train_batch": 2}),
        ]
    return variants


def tiny_variants() -> list[Variant]:
    """The same grid on the tiny architectures of ``alignkit.models.tiny`` (CPU, seconds)."""
    pool = {"k": 2, "steps": 4, "divert_start_step": 1, "num_inner_steps": 0, "train_batch": 2}
    return [
        Variant(model, algo, checkpointing, 2, 4, 32, pool if algo == "spo" else None)
        for checkpointing in (False, True)
        for model in ("sd15", "sdxl")
        for algo in ("dpo", "spo")
    ]


def full_components(model: str, device: torch.device):
    """Random-init SD1.5 or SDXL, built on ``device`` directly (no slow CPU init)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from alignkit.models.components import Components
    from alignkit.models.tokenizer import offline_clip_tokenizer

    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    )
    with torch.device(device):
        clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
        if model == "sd15":
            unet = UNet2DConditionModel(**SD15_UNET)
            vae = AutoencoderKL(**VAE, sample_size=512, scaling_factor=0.18215)
            return Components("sd", unet, vae, scheduler, [clip_l], [offline_clip_tokenizer()])
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025)
        big_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_TEXT))
    tokenizers = [offline_clip_tokenizer(), offline_clip_tokenizer(pad_token="!")]
    return Components("sdxl", unet, vae, scheduler, [clip_l, big_g], tokenizers, True)


def tiny_components(model: str, device: torch.device):
    from alignkit.models.tiny import tiny_sd_components, tiny_sdxl_components

    return (tiny_sd_components if model == "sd15" else tiny_sdxl_components)(resolution=32)


class SyntheticLatentPairs:
    """Random latent pairs and encoded prompts: what the latent cache would hand over."""

    def __init__(self, backbone, batch_size: int) -> None:
        from alignkit.models.text import default_micro_cond

        size = backbone.unet.config.sample_size
        self.shape = (batch_size, backbone.unet.config.in_channels, size, size)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
        self.prompts = prompts
        self.text = {k: v.cpu() for k, v in backbone.encode_prompts(prompts).items()}
        self.micro_cond = default_micro_cond(batch_size, backbone.resolution)

    def batch(self, index: int):
        from alignkit.data.batch import PairBatch

        generator = torch.Generator().manual_seed(index)
        return PairBatch(
            latents_w=torch.randn(self.shape, generator=generator),
            latents_l=torch.randn(self.shape, generator=generator),
            text=self.text,
            micro_cond=self.micro_cond,
            prompts=self.prompts,
        )


def _backbone(variant: Variant, components, device: torch.device, dtype: torch.dtype):
    from alignkit.config import LoRAConfig, ModelConfig
    from alignkit.models import Backbone

    cfg = ModelConfig(
        name=f"gpu_check_{variant.model}",
        family="sd" if variant.model == "sd15" else "sdxl",
        init="random",
        resolution=variant.resolution,
        lora=LoRAConfig(rank=variant.rank, alpha=float(variant.rank)),
        gradient_checkpointing=variant.gradient_checkpointing,
    )
    return Backbone(components, cfg, cfg.name, device, dtype)


def _algorithm_and_batches(variant: Variant, backbone):
    from alignkit.algorithms import build_algorithm
    from alignkit.algorithms.dpo import DPOConfig
    from alignkit.algorithms.spo import SPOConfig
    from alignkit.data.prompts import PromptBatches

    if variant.algo == "dpo":
        algorithm = build_algorithm(DPOConfig(name="dpo"), backbone)
        return algorithm, SyntheticLatentPairs(backbone, variant.batch)
    pool = dict(variant.spo or {})
    cfg = SPOConfig(
        name="spo",
        spm_base="tiny_random",
        threshold=0.0,  # every step makes a pair, so each round trains a known number of steps
        train_batch_size=pool.pop("train_batch"),
        **pool,
    )
    return build_algorithm(cfg, backbone), PromptBatches(PROMPTS, variant.batch, seed=0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    from alignkit.app import peak_memory_mb

    return peak_memory_mb(device)


def measure(
    variant: Variant, build, device: torch.device, dtype: torch.dtype, steps: int, scratch: Path
) -> dict[str, Any]:
    """Train ``steps`` timed optimizer steps (after one untimed) and report their times.

    SPO's steps that start a sampling round are timed apart from those that only train."""
    from accelerate import Accelerator

    from alignkit.config import TrainerConfig
    from alignkit.trainer import Trainer

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    backbone = _backbone(variant, build(variant.model, device), device, dtype)
    algorithm, batches = _algorithm_and_batches(variant, backbone)
    precision = {torch.bfloat16: "bf16", torch.float32: "no"}[dtype]
    trainer_cfg = TrainerConfig(
        max_steps=steps + 1, batch_size=variant.batch, progress_bar=False, max_grad_norm=1.0
    )
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    trainer = Trainer(trainer_cfg, backbone, algorithm, batches, scratch, accelerator, 0, {})
    train_only, with_round = [], []
    for index in range(steps + 1):
        samples = variant.algo == "spo" and not getattr(algorithm, "waiting", None)
        _synchronize(device)
        started = time.perf_counter()
        trainer.train_step()
        _synchronize(device)
        if index > 0:
            (with_round if samples else train_only).append(time.perf_counter() - started)
    result = {
        **variant.__dict__,
        "step_s_median": statistics.median(train_only) if train_only else None,
        "timed_steps": len(train_only),
        "round_step_s_median": statistics.median(with_round) if with_round else None,
        "round_steps": len(with_round),
        "peak_memory_mb": _peak_memory_mb(device),
        "memory_at_start_mb": before,
    }
    del trainer, algorithm, batches, backbone
    return result


# -- diffusers' SDXL DPO example on the same model ----------------------------------------------
def write_pipeline_folder(components, folder: Path) -> Path:
    """The random model as a diffusers SDXL folder, for the example script to load."""
    from alignkit.models.components import pipeline_from_components

    pipeline_from_components(components).save_pretrained(folder, safe_serialization=True)
    return folder


def write_pair_parquet(folder: Path, rows: int, size: int = 64) -> Path:
    """Pick-a-Pic-shaped rows with random JPEGs (the example resizes them to its resolution)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    generator = np.random.default_rng(0)

    def jpeg() -> bytes:
        pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        return buffer.getvalue()

    table = pd.DataFrame(
        {
            "caption": [PROMPTS[i % len(PROMPTS)] for i in range(rows)],
            "jpg_0": [jpeg() for _ in range(rows)],
            "jpg_1": [jpeg() for _ in range(rows)],
            "label_0": [1.0] * rows,
            "label_1": [0.0] * rows,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "train-00000.parquet")
    return folder


def diffusers_command(
    script: Path, variant: Variant, model_dir: Path, data_dir: Path, out_dir: Path, steps: int
) -> list[str]:
    """The example's arguments at the variant's settings (no validation, no hub)."""
    command = [
        f"--pretrained_model_name_or_path={model_dir}",
        f"--dataset_name={data_dir}",
        "--dataset_split_name=train",
        f"--output_dir={out_dir}",
        f"--resolution={variant.resolution}",
        f"--train_batch_size={variant.batch}",
        f"--rank={variant.rank}",
        f"--max_train_steps={steps + 1}",
        "--learning_rate=1e-5",
        "--lr_warmup_steps=0",
        "--checkpointing_steps=1000000",
        "--mixed_precision=bf16",
        "--seed=0",
        "--report_to=tensorboard",
    ]
    if variant.gradient_checkpointing:
        command.append("--gradient_checkpointing")
    return [str(script), *command]


def run_timed_script(script_and_args: list[str], out: Path) -> None:
    """Run a training script in this process and record when each optimizer step ends
    (a global step hook: the script itself is not changed), then the peak memory."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ends: list[float] = []

    def record(optimizer, args, kwargs) -> None:
        _synchronize(device)
        ends.append(time.perf_counter())

    hook = register_optimizer_step_post_hook(record)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sys.argv = list(script_and_args)
    try:
        runpy.run_path(script_and_args[0], run_name="__main__")
    finally:
        hook.remove()
    durations = [later - earlier for earlier, later in zip(ends, ends[1:])]
    result = {
        "step_s_median": statistics.median(durations) if durations else None,
        "timed_steps": len(durations),
        "peak_memory_mb": _peak_memory_mb(device),
    }
    out.write_text(json.dumps(result))


def measure_diffusers(
    checkout: Path, variant: Variant, model_dir: Path, data_dir: Path, steps: int, scratch: Path
) -> dict[str, Any]:
    """The example in a subprocess of its own (its own peak memory, its own accelerate)."""
    out_dir = scratch / f"diffusers_gc{int(variant.gradient_checkpointing)}"
    result_file = out_dir.with_suffix(".json")
    script = checkout / DIFFUSERS_SCRIPT
    command = [sys.executable, "-m", "experiments.gpu_check", "--timed-script", str(result_file)]
    command += ["--", *diffusers_command(script, variant, model_dir, data_dir, out_dir, steps)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    if finished.returncode != 0:
        return {**variant.__dict__, "error": finished.stderr.strip().splitlines()[-20:]}
    return {**variant.__dict__, **json.loads(result_file.read_text())}


def check_diffusers_checkout(checkout: str | None) -> Path | None:
    if checkout is None:
        return None
    script = Path(checkout).expanduser() / DIFFUSERS_SCRIPT
    if not script.is_file():
        raise FileNotFoundError(
            f"--diffusers {checkout}: no {DIFFUSERS_SCRIPT} there; pass the root of a "
            "diffusers git checkout (git clone https://github.com/huggingface/diffusers)"
        )
    return Path(checkout).expanduser()


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        raise ValueError("no CUDA device: the full-size check needs a GPU; --tiny runs on a CPU")
    checkout = check_diffusers_checkout(args.diffusers)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    build = tiny_components if args.tiny else full_components
    variants = [
        v for v in (tiny_variants() if args.tiny else full_variants()) if v.model in args.models
    ]
    report: dict[str, Any] = {
        "mode": "tiny" if args.tiny else "full",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": args.precision,
        "timed_steps": args.steps,
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "results": [],
    }
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for variant in variants:
            print(f"measuring {variant}", flush=True)
            try:
                result = measure(variant, build, device, dtype, args.steps, scratch)
            except torch.OutOfMemoryError as error:
                result = {**variant.__dict__, "error": f"out of memory: {error}".splitlines()[0]}
            report["results"].append(result)
            print(json.dumps(result), flush=True)
        report["diffusers_sdxl_dpo"] = _diffusers_rows(checkout, variants, build, args, scratch)
    return report


def _diffusers_rows(checkout, variants, build, args, scratch: Path) -> dict[str, Any]:
    if checkout is None:
        return {"skipped": "no --diffusers checkout given"}
    sdxl_dpo = [v for v in variants if v.model == "sdxl" and v.algo == "dpo"]
    if not sdxl_dpo:
        return {"skipped": "--models leaves out sdxl"}
    device = torch.device("cpu" if args.tiny else "cuda")
    components = build("sdxl", device)
    model_dir = write_pipeline_folder(components, scratch / "sdxl_random")
    del components
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows = (args.steps + 1) * max(v.batch for v in sdxl_dpo)
    data_dir = write_pair_parquet(scratch / "pairs", rows)
    results = []
    for variant in sdxl_dpo:
        print(f"diffusers example: {variant}", flush=True)
        row = measure_diffusers(checkout, variant, model_dir, data_dir, args.steps, scratch)
        results.append(row)
        print(json.dumps(row), flush=True)
    return {"script": DIFFUSERS_SCRIPT, "results": results}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--tiny", action="store_true", help="tiny architectures on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--precision", choices=["bf16", "no"], default="bf16")
    parser.add_argument("--models", nargs="+", choices=["sd15", "sdxl"], default=["sd15", "sdxl"])
    parser.add_argument("--diffusers", help="a diffusers checkout: add its SDXL DPO example")
    parser.add_argument("--timed-script", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("script_and_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timed_script is None and args.out is None:
        parser.error("--out is required: the JSON file to write the results to")
    if args.steps is None:
        args.steps = 2 if args.tiny else 4
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: time at least 1 step per variant")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.timed_script is not None:
        script_and_args = [a for a in args.script_and_args if a != "--"]
        run_timed_script(script_and_args, args.timed_script)
        return None
    report = run_check(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"gpu_check: error: {error}")
