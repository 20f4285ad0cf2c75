"""alignkit's DPO step and sampling loops side by side with diffusers' and the SPO authors'.

A benchmark, not a test. It builds one tiny SD1.5-architecture model folder (random init,
SD1.5's block layout at small widths; 64 px images, 8x8 latents) and one parquet folder of
preference pairs, then times, alternating in one process so machine load hits both alike:

* ``dpo``: one Diffusion-DPO optimizer step, batch 4 pairs, LoRA r4 on to_q/k/v/out.0, AdamW,
  clipping at 1.0. alignkit: ``Trainer.train_step`` (latent cache on, its default). diffusers:
  the body of the training loop of ``examples/research_projects/diffusion_dpo/
  train_diffusion_dpo.py``, driven here on the same model folder: their ``encode_prompt`` and
  model set-up, and their step's operations in their order (VAE encode of both images,
  shared noise and timesteps, policy pass, adapters off for the reference pass under no_grad,
  logsigmoid loss with beta_dpo=2500, which is alignkit's beta=5000, backward, clip, AdamW,
  lr schedule, zero_grad). Their batches (decoded, transformed pixels and token ids, as their
  DataLoader hands them over) are made before timing; decoding JPEGs is not timed on either
  side. Peak memory: each side alone in a subprocess (peak RSS above the RSS after imports).
  ``--reference precomputed`` runs alignkit with ``algo.reference=precomputed``: the reference
  errors of every step it will take are computed first (timed apart, reported per step and
  counted in a second ratio; ``--reference-micro-batches`` per forward pass), then each timed
  step runs the policy only.
* ``sampling``: 4 prompts, 20 DDIM steps, CFG 5, eta 1, 64 px, decoded to pixels. alignkit:
  ``sample_with_log_probs`` + one decode (what ``alignkit.bench_spo`` calls plain sampling).
  diffusers: ``StableDiffusionPipeline`` from the folder with a DDIMScheduler, ``output_type="pt"``.
  Both UNets carry the same LoRA r4 adapter (a LoRA policy being sampled). ``speedups`` times
  the same alignkit call against itself with ``model.sampling_speedups=false`` (the "other").
* ``spo`` (with ``--spo PATH`` to a checkout of github.com/RockeyCoss/SPO): one SPO round, k=4
  candidates from step 4, with a trivial scorer (mean pixel) and threshold 0 on both sides.
  alignkit: ``PoolSampler.sample``. The authors: ``multi_sample_pipeline`` on the pipeline above;
  their compare function is the few lines of ``preference_score_compare`` restated here (their
  module imports mmengine, which alignkit does not install).

    python experiments/bench_vs_diffusers.py --diffusers /path/to/diffusers [--spo /path/to/SPO]

Ratios are medians of the other side's seconds over alignkit's (above 1: alignkit is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

RESOLUTION = 64
DPO_SCRIPT = "examples/research_projects/diffusion_dpo/train_diffusion_dpo.py"
SPO_PACKAGE = "spo_training_and_inference"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
#: steps a compiled alignkit side takes before timing: the forward and backward graphs compile on
#: the first, the reference pass (adapters off) may recompile on the second
COMPILE_WARMUP_STEPS = 3
BETA_DIFFUSERS = 2500.0  # their default --beta_dpo; alignkit's beta carries the 0.5: 5000


# -- the shared model folder and pairs ---------------------------------------------------------


def build_model_folder(folder: Path) -> Path:
    """A random-init pipeline folder with SD1.5's block layout at small widths."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from alignkit.models.tokenizer import offline_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 8,
        block_out_channels=(96, 192, 384, 384),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RESOLUTION,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            vocab_size=49408,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=offline_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


def write_pairs(folder: Path, rows: int) -> Path:
    """Smooth random 96 px JPEG pairs in the Pick-a-Pic schema (resized to 64 px on load)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)

    def jpeg() -> bytes:
        grid = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(grid).resize((96, 96), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    label_0 = (rng.random(rows) < 0.5).astype(float)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "caption": [f"a synthetic prompt number {i}" for i in range(rows)],
            "jpg_0": [jpeg() for _ in range(rows)],
            "jpg_1": [jpeg() for _ in range(rows)],
            "label_0": label_0,
            "label_1": 1.0 - label_0,
        }
    )
    pq.write_table(table, folder / "train-00000.parquet")
    return folder


# -- the DPO step, both sides ------------------------------------------------------------------


def alignkit_dpo_step(
    model: Path,
    pairs: Path,
    scratch: Path,
    batch: int,
    compile_unet: bool = False,
    reference: str = "live",
    steps: int = 10**9,
    per_pass: int = 1,
) -> tuple[Callable[[], None], float]:
    """alignkit's step function, and the seconds spent computing reference errors ahead (0 with
    ``reference="live"``; with ``"precomputed"`` they are computed for ``steps`` steps)."""
    from accelerate import Accelerator

    from alignkit.algorithms import build_algorithm
    from alignkit.algorithms.dpo import DPOConfig
    from alignkit.config import DataConfig, LoRAConfig, ModelConfig, TrainerConfig
    from alignkit.data import build_pair_batches
    from alignkit.models import build_backbone
    from alignkit.trainer import Trainer

    lora = LoRAConfig(rank=4, alpha=4.0, target_modules=list(LORA_TARGETS))
    model_cfg = ModelConfig(
        name="bench", family="sd", path=str(model), resolution=RESOLUTION, lora=lora
    )
    backbone = build_backbone(model_cfg, "cpu")
    data_cfg = DataConfig(name="bench", path=str(pairs), cache_dir=str(scratch / "cache"))
    batches = build_pair_batches(data_cfg, backbone, RESOLUTION, batch, seed=0, device="cpu")
    algo = DPOConfig(
        name="dpo",
        beta=2 * BETA_DIFFUSERS,
        reference=reference,
        reference_micro_batches=per_pass,
    )
    trainer = Trainer(
        TrainerConfig(
            max_steps=steps, batch_size=batch, lr=1e-5, progress_bar=False, compile=compile_unet
        ),
        backbone,
        build_algorithm(algo, backbone),
        batches,
        tempfile.mkdtemp(prefix="run-", dir=scratch),  # each call computes its own errors
        Accelerator(cpu=True),
        0,
        {},
    )
    started = time.perf_counter()
    trainer.prepare_algorithm()
    return (lambda: trainer.train_step()), time.perf_counter() - started


def _load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _diffusers_batches(pairs: Path, tokenizer, tokenize_captions, batch: int) -> list[dict]:
    """Their collated batches: winner and loser stacked on channels, their transforms."""
    import pyarrow.parquet as pq
    from PIL import Image
    from torchvision import transforms

    table = pq.read_table(pairs).to_pydict()
    transform = transforms.Compose(
        [
            transforms.Resize(RESOLUTION, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(RESOLUTION),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )

    def view(data: bytes) -> torch.Tensor:
        return transform(Image.open(io.BytesIO(data)).convert("RGB"))

    rows = len(table["caption"])
    out = []
    for start in range(0, rows - batch + 1, batch):
        picked = range(start, start + batch)
        pixels = []
        for i in picked:
            views = [view(table["jpg_0"][i]), view(table["jpg_1"][i])]
            if table["label_0"][i] == 0:
                views.reverse()
            pixels.append(torch.cat(views, dim=0))
        captions = {"caption": [table["caption"][i] for i in picked]}
        out.append(
            {
                "pixel_values": torch.stack(pixels).float(),
                "input_ids": tokenize_captions(tokenizer, captions),
            }
        )
    return out


def diffusers_dpo_step(checkout: Path, model: Path, pairs: Path, batch: int) -> Callable[[], None]:
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from transformers import AutoTokenizer

    theirs = _load_script(checkout / DPO_SCRIPT, "train_diffusion_dpo")
    folder = str(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer", use_fast=False)
    text_encoder_class = theirs.import_model_class_from_model_name_or_path(folder, None)
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    text_encoder = text_encoder_class.from_pretrained(folder, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    for frozen in (vae, text_encoder, unet):
        frozen.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    accelerator = Accelerator(cpu=True)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    unet.train()
    batches = itertools.cycle(_diffusers_batches(pairs, tokenizer, theirs.tokenize_captions, batch))

    def step() -> None:
        data = next(batches)
        pixels = data["pixel_values"]
        both = torch.cat(pixels.chunk(2, dim=1))
        latents = vae.encode(both).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents).chunk(2)[0].repeat(2, 1, 1, 1)
        pairs_in_batch = latents.shape[0] // 2
        steps = noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (pairs_in_batch,), dtype=torch.long).repeat(2)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        text = theirs.encode_prompt(text_encoder, data["input_ids"]).repeat(2, 1, 1)
        prediction = unet(noisy, timesteps, text).sample
        errors = F.mse_loss(prediction.float(), noise.float(), reduction="none")
        model_w, model_l = errors.mean(dim=[1, 2, 3]).chunk(2)
        accelerator.unwrap_model(unet).disable_adapters()
        with torch.no_grad():
            reference = unet(noisy, timesteps, text).sample.detach()
            ref_errors = F.mse_loss(reference.float(), noise.float(), reduction="none")
            ref_w, ref_l = ref_errors.mean(dim=[1, 2, 3]).chunk(2)
        accelerator.unwrap_model(unet).enable_adapters()
        logits = (ref_w - ref_l) - (model_w - model_l)
        loss = -F.logsigmoid(BETA_DIFFUSERS * logits).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        loss.item()  # their loop logs it every step

    return step


# -- sampling, both sides ----------------------------------------------------------------------

PROMPTS = [f"a synthetic prompt number {i}" for i in range(4)]


def _alignkit_sampler(model: Path):
    from alignkit.config import LoRAConfig, ModelConfig
    from alignkit.models import build_backbone

    lora = LoRAConfig(rank=4, alpha=4.0, target_modules=list(LORA_TARGETS))
    cfg = ModelConfig(name="bench", family="sd", path=str(model), resolution=RESOLUTION, lora=lora)
    backbone = build_backbone(cfg, "cpu")
    backbone.unet.eval()
    return backbone


def _diffusers_pipeline(model: Path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    pipeline = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def trivial_score(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(1, 2, 3))


def sampling_pairs(model: Path, spo: Path | None) -> dict[str, tuple[Callable, Callable]]:
    """name -> (alignkit's function, the other side's function), each one timed call."""
    from alignkit.pool_sampler import PoolConfig, PoolSampler
    from alignkit.sampling import sample_with_log_probs

    backbone = _alignkit_sampler(model)
    pipeline = _diffusers_pipeline(model)
    seeds = list(range(len(PROMPTS)))

    def alignkit_plain() -> None:
        generator = torch.Generator().manual_seed(0)
        trajectory = sample_with_log_probs(backbone, PROMPTS, seeds, generator, 20, 5.0, 1.0)
        backbone.decode_latents(trajectory.latents[:, -1])

    def diffusers_plain() -> None:
        generator = torch.Generator().manual_seed(0)
        pipeline(
            PROMPTS, height=RESOLUTION, width=RESOLUTION, num_inference_steps=20,
            guidance_scale=5.0, eta=1.0, generator=generator, output_type="pt",
        )  # fmt: skip

    def alignkit_plain_without_speedups() -> None:
        backbone.cfg.sampling_speedups = False
        try:
            alignkit_plain()
        finally:
            backbone.cfg.sampling_speedups = True

    timed = {
        "sampling": (alignkit_plain, diffusers_plain),
        "speedups": (alignkit_plain, alignkit_plain_without_speedups),
    }
    if spo is None:
        return timed
    sys.path.insert(0, str(spo / SPO_PACKAGE))
    from spo.custom_diffusers.multi_sample_pipeline import multi_sample_pipeline

    pool = PoolSampler(
        backbone,
        lambda images, prompts, timesteps: trivial_score(images),
        PoolConfig(k=4, threshold=0.0, steps=20, guidance=5.0, eta=1.0, divert_start_step=4),
    )

    def compare(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ranked, order = torch.sort(scores, dim=0, descending=True)
        ends = ranked[[0, -1], :].softmax(dim=0)
        return order[[0, -1], :], ends[0] - ends[1] > 0.0

    def alignkit_round() -> None:
        pool.sample(PROMPTS, torch.Generator().manual_seed(0))

    def authors_round() -> None:
        generator = torch.Generator().manual_seed(0)
        embeds, negative = pipeline.encode_prompt(PROMPTS, "cpu", 1, True, [""] * len(PROMPTS))
        multi_sample_pipeline(
            pipeline, prompt_embeds=embeds, negative_prompt_embeds=negative,
            num_inference_steps=20, guidance_scale=5.0, eta=1.0, generator=generator,
            divert_start_step=4, num_samples_each_step=4,
            preference_model_fn=lambda images, info: trivial_score(images),
            compare_fn=compare, extra_info={},
        )  # fmt: skip

    timed["spo_round"] = (alignkit_round, authors_round)
    return timed


# -- measuring -----------------------------------------------------------------------------------


def side_by_side(pairs: dict[str, tuple[Callable, Callable]], repeats: int) -> dict:
    """Alternate alignkit and the other side ``repeats`` times after one warm-up call each."""
    results = {}
    for name, (ours, theirs) in pairs.items():
        ours(), theirs()
        seconds: dict[str, list[float]] = {"alignkit": [], "other": []}
        for _ in range(repeats):
            for side, fn in (("alignkit", ours), ("other", theirs)):
                started = time.perf_counter()
                fn()
                seconds[side].append(time.perf_counter() - started)
        medians = {side: statistics.median(values) for side, values in seconds.items()}
        results[name] = {
            "median_s": medians,
            "all_s": seconds,
            "speedup": medians["other"] / medians["alignkit"],
        }
        print(
            f"{name:10s} alignkit {medians['alignkit']:.3f} s, other {medians['other']:.3f} s: "
            f"alignkit {results[name]['speedup']:.2f}x ({repeats} repeats, medians)",
            flush=True,
        )
    return results


def _reset_peak_rss() -> None:
    """Linux: make VmHWM (the peak RSS) start again from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _alignkit_side(
    args: argparse.Namespace, scratch: Path, steps: int
) -> tuple[Callable[[], None], float]:
    """alignkit's DPO step as the command line asks for it, on the scratch folder's model."""
    return alignkit_dpo_step(
        scratch / "model",
        scratch / "pairs",
        scratch,
        args.batch,
        args.compile,
        args.reference,
        steps,
        args.reference_micro_batches,
    )


def measure_memory(side: str, args: argparse.Namespace) -> float:
    """Peak RSS above the after-import RSS of ``steps`` DPO steps of one side, alone."""
    _load_script(args.diffusers / DPO_SCRIPT, "train_diffusion_dpo")  # same imports both sides
    import alignkit.trainer  # noqa: F401

    _reset_peak_rss()
    baseline = _peak_rss_mb()
    scratch = Path(args.scratch)
    if side == "alignkit":
        whole_pass = max(args.memory_steps, args.reference_micro_batches)  # at least one ahead
        step, _ = _alignkit_side(args, scratch, whole_pass)
    else:
        step = diffusers_dpo_step(args.diffusers, scratch / "model", scratch / "pairs", args.batch)
    for _ in range(args.memory_steps):
        step()
    return _peak_rss_mb() - baseline


def dpo_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers", type=Path, required=True, help="a diffusers checkout")
    parser.add_argument("--spo", type=Path, default=None, help="a RockeyCoss/SPO checkout")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="pairs per DPO step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--what", choices=["all", "dpo", "sampling"], default="all")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="alignkit's DPO step with trainer.compile=true (inductor; the first steps compile)",
    )
    parser.add_argument(
        "--reference",
        choices=["live", "precomputed"],
        default="live",
        help="alignkit's algo.reference: precomputed computes the reference errors of the "
        "timed steps first (timed apart and reported) and then steps the policy only",
    )
    parser.add_argument(
        "--reference-micro-batches",
        type=int,
        default=1,
        help="with --reference precomputed: micro-batches per forward pass computed ahead",
    )
    parser.add_argument("--memory-side", choices=["alignkit", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.diffusers / DPO_SCRIPT).is_file():
        raise SystemExit(f"error: --diffusers {args.diffusers} has no {DPO_SCRIPT}")
    if args.spo is not None and not (args.spo / SPO_PACKAGE).is_dir():
        raise SystemExit(f"error: --spo {args.spo} has no {SPO_PACKAGE}/ folder")
    if args.memory_side:
        print(json.dumps({"peak_mb": measure_memory(args.memory_side, args)}))
        return {}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {
        "threads": args.threads,
        "alignkit_compiled": args.compile,
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        build_model_folder(scratch / "model")
        write_pairs(scratch / "pairs", rows=8 * args.batch)
        if args.what in ("all", "dpo"):
            steps = (COMPILE_WARMUP_STEPS if args.compile else 0) + args.repeats + 2
            ours, ahead_s = _alignkit_side(args, scratch, steps)
            results["reference"] = args.reference
            results["reference_micro_batches"] = args.reference_micro_batches
            results["reference_ahead_s_per_step"] = ahead_s / steps
            theirs = diffusers_dpo_step(
                args.diffusers, scratch / "model", scratch / "pairs", args.batch
            )
            if args.compile:  # compilation (and any recompilation) out of the timed steps
                for _ in range(COMPILE_WARMUP_STEPS):
                    ours()
            results["gflop_per_step"] = {
                "alignkit": None if args.compile else dpo_flops(ours),
                "other": dpo_flops(theirs),
            }
            results.update(side_by_side({"dpo_step": (ours, theirs)}, args.repeats))
            if args.reference == "precomputed":
                timed = results["dpo_step"]["median_s"]
                whole = timed["alignkit"] + results["reference_ahead_s_per_step"]
                results["dpo_step"]["speedup_counting_ahead"] = timed["other"] / whole
                print(
                    f"reference errors computed ahead: {results['reference_ahead_s_per_step']:.3f}"
                    f" s per step; counting them, alignkit "
                    f"{results['dpo_step']['speedup_counting_ahead']:.2f}x"
                )
            memory = {}
            for side in ("alignkit", "diffusers"):
                command = [
                    sys.executable, __file__, "--diffusers", str(args.diffusers),
                    "--memory-side", side, "--scratch", str(scratch),
                    "--batch", str(args.batch), "--threads", str(args.threads),
                    "--memory-steps", str(args.memory_steps),
                    "--reference", args.reference,
                    "--reference-micro-batches", str(args.reference_micro_batches),
                    *(["--compile"] if args.compile else []),
                ]  # fmt: skip
                output = subprocess.run(command, capture_output=True, text=True, check=True)
                memory[side] = json.loads(output.stdout.strip().splitlines()[-1])["peak_mb"]
            results["dpo_peak_mb"] = memory
            flops = results["gflop_per_step"]
            ours_flops = "compiled" if flops["alignkit"] is None else f"{flops['alignkit']:.1f}"
            print(
                f"DPO peak RSS above imports: alignkit {memory['alignkit']:.0f} MB, "
                f"diffusers {memory['diffusers']:.0f} MB; "
                f"GFLOP/step {ours_flops} vs {flops['other']:.1f}"
            )
        if args.what in ("all", "sampling"):
            results.update(side_by_side(sampling_pairs(scratch / "model", args.spo), args.repeats))
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
