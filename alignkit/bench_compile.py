"""``python -m alignkit.bench_compile``: DPO step time with and without ``trainer.compile``.

Two trainers, one plain and one compiled, on the same tiny_sd model, random latent pairs and
seed, in one process. The compiled one's first steps pay the compilation (reported apart);
after those, the two take turns step by step, so a change of load on a shared machine hits
both alike. Prints the median step time of each and the speed-up as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from accelerate import Accelerator

from alignkit.algorithms import build_algorithm
from alignkit.algorithms.dpo import DPOConfig
from alignkit.config import ModelConfig, TrainerConfig
from alignkit.data.batch import PairBatch
from alignkit.models import Backbone, build_backbone
from alignkit.models.text import default_micro_cond
from alignkit.trainer import Trainer

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a white cross"]
RESOLUTION = 32
WARMUP_STEPS = 2  # compilation, and the recompilation for the reference's no-grad pass


class RandomPairs:
    """Latent pairs drawn from ``index``: both trainers see the same batches."""

    def __init__(self, backbone: Backbone, batch_size: int) -> None:
        self.batch_size = batch_size
        self.text = backbone.encode_prompts(PROMPTS)

    def batch(self, index: int) -> PairBatch:
        generator = torch.Generator().manual_seed(index)
        size = RESOLUTION // 4
        shape = (self.batch_size, 4, size, size)
        rows = [(index + i) % len(PROMPTS) for i in range(self.batch_size)]
        return PairBatch(
            latents_w=torch.randn(shape, generator=generator),
            latents_l=torch.randn(shape, generator=generator),
            text={k: v[rows] for k, v in self.text.items()},
            micro_cond=default_micro_cond(self.batch_size, RESOLUTION),
            prompts=[PROMPTS[r] for r in rows],
        )


def _trainer(compile_unet: bool, backend: str, batch_size: int, device: str) -> Trainer:
    model = ModelConfig(name="tiny_sd", family="sd", init="random", resolution=RESOLUTION)
    backbone = build_backbone(model, device)
    cfg = TrainerConfig(
        batch_size=batch_size, lr=1e-4, compile=compile_unet, compile_backend=backend
    )
    algo = DPOConfig(name="dpo")
    return Trainer(
        cfg,
        backbone,
        build_algorithm(algo, backbone),
        RandomPairs(backbone, batch_size),
        tempfile.mkdtemp(prefix="bench_compile_"),
        Accelerator(cpu=device == "cpu"),
        seed=0,
        config={},
    )


def _timed_step(trainer: Trainer) -> float:
    started = time.perf_counter()
    trainer.train_step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each trainer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backend", default="inductor", help="trainer.compile_backend")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plain = _trainer(False, args.backend, args.batch_size, device)
    compiled = _trainer(True, args.backend, args.batch_size, device)
    compile_seconds = sum(_timed_step(compiled) for _ in range(WARMUP_STEPS))
    for _ in range(WARMUP_STEPS):
        _timed_step(plain)
    times: dict[str, list[float]] = {"plain": [], "compiled": []}
    for _ in range(args.steps):
        times["plain"].append(_timed_step(plain))
        times["compiled"].append(_timed_step(compiled))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "device": device,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "first_steps_with_compilation_s": round(compile_seconds, 1),
        "median_step_s": {name: round(value, 4) for name, value in medians.items()},
        "speedup": round(medians["plain"] / medians["compiled"], 3),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
