"""``python -m alignkit.bench``: DPO training throughput and peak memory, as ratios.

Each variant runs in its own subprocess (so peak memory is that variant's alone) on the same
tiny_sd model and the same synthetic preference pairs, side by side in one invocation:
- ``cache`` vs ``no_cache``: VAE latents and text embeddings computed once vs every step;
- ``lora_ref`` vs ``frozen_copy``: the reference as the adapter-disabled UNet vs a second,
  frozen UNet in memory.
On a GPU, memory is the CUDA allocator's peak; on the CPU, the process's peak RSS above its
RSS after the imports (so models, data and activations count, the interpreter does not).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {
    "cache": {"cache": True, "reference": "lora"},
    "no_cache": {"cache": False, "reference": "lora"},
    "lora_ref": {"cache": True, "reference": "lora"},
    "frozen_copy": {"cache": True, "reference": "copy"},
}
COMPARISONS = [("no_cache", "cache"), ("frozen_copy", "lora_ref")]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(variant: str, steps: int, batch_size: int, data_dir: str, cache_dir: str) -> dict:
    """Train ``steps`` DPO steps in this process and report speed and memory."""
    from accelerate import Accelerator

    from alignkit.algorithms import build_algorithm
    from alignkit.algorithms.dpo import DPOConfig
    from alignkit.config import DataConfig, ModelConfig, TrainerConfig
    from alignkit.data import build_pair_batches
    from alignkit.models import build_backbone
    from alignkit.trainer import Trainer

    settings = VARIANTS[variant]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    after_imports = _peak_rss_mb()
    backbone = build_backbone(
        ModelConfig(name="tiny_sd", family="sd", init="random", resolution=32), device
    )
    if settings["reference"] == "copy":
        backbone.reference_unet = copy.deepcopy(backbone.unet).requires_grad_(False)
        backbone.reference_unet.disable_adapters()
    data_cfg = DataConfig(name="bench", path=data_dir, cache=settings["cache"], cache_dir=cache_dir)
    batches = build_pair_batches(data_cfg, backbone, 32, batch_size, seed=0, device=device)
    trainer_cfg = TrainerConfig(max_steps=steps, batch_size=batch_size, progress_bar=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            trainer_cfg,
            backbone,
            build_algorithm(DPOConfig(name="dpo"), backbone),
            batches,
            run_dir,
            Accelerator(cpu=device == "cpu"),
            0,
            {},
        )
        trainer.train_step()  # warm-up, not timed
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        elapsed = time.perf_counter() - started
    memory = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else _peak_rss_mb() - after_imports
    )
    return {
        "variant": variant,
        "device": device,
        "samples_per_s": steps * batch_size / elapsed,
        "peak_memory_mb": memory,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _write_bench_pairs(folder: Path, rows: int) -> None:
    from alignkit.tinyworld.grammar import train_prompts
    from alignkit.tinyworld.pairs import render_pairs, write_parquet_folder

    prompts = train_prompts()[: max(1, rows // 2)]
    write_parquet_folder(render_pairs(prompts, 2, seed=0, tie_margin=0.0), folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        result = _measure(args.variant, args.steps, args.batch_size, args.data_dir, args.cache_dir)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as scratch:
        data_dir, cache_dir = Path(scratch) / "pairs", Path(scratch) / "cache"
        _write_bench_pairs(data_dir, args.rows)
        results = {}
        for variant in VARIANTS:
            command = [
                sys.executable, "-m", "alignkit.bench", "--variant", variant,
                "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                "--data-dir", str(data_dir), "--cache-dir", str(cache_dir),
            ]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
            print(
                f"{variant:12s} {results[variant]['samples_per_s']:8.1f} samples/s "
                f"{results[variant]['peak_memory_mb']:9.1f} MB peak (training)"
            )
    ratios = {}
    for slow, fast in COMPARISONS:
        speed = results[fast]["samples_per_s"] / results[slow]["samples_per_s"]
        memory = results[slow]["peak_memory_mb"] / max(results[fast]["peak_memory_mb"], 1e-6)
        ratios[f"{fast}_vs_{slow}"] = {"speedup": speed, "memory_saving": memory}
        print(f"{fast} vs {slow}: {speed:.2f}x samples/s, {memory:.2f}x less peak memory")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
