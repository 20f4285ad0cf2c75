"""``python -m alignkit.bench_spo``: the cost of one SPO sampling round vs plain sampling.

Both run side by side, in one process, on the same model, prompts and step count, and are
repeated alternately (``--repeats``) so machine load hits both alike:
- ``plain``: DDIM with CFG and eta, the same images (one per prompt), decoded once at the end;
- ``spo_round``: the step-wise pool sampler (``k`` candidates from ``divert_start_step``,
  each pooled step's x0_hat decoded and scored by the SPM, pairs collected).
The ratio of medians is the price of a round; the UNet rows per round explain most of it
(``k`` times the batch after the divert step) and the rest is decoding + SPM scoring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from alignkit.config import ModelConfig
from alignkit.models import build_backbone
from alignkit.pool_sampler import PoolConfig, PoolSampler
from alignkit.sampling import sample_with_log_probs
from alignkit.tinyworld.assets import asset_path


def _count_unet_rows(backbone) -> list[int]:
    rows: list[int] = []
    unet = backbone.unet_forward

    def counting(x, *args, **kwargs):
        rows.append(x.shape[0])
        return unet(x, *args, **kwargs)

    backbone.unet_forward = counting
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_random", help="tiny_random | tiny | a folder")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--divert-start-step", type=int, default=4)
    parser.add_argument("--num-inner-steps", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spm", default="tiny_random", help="tiny_random | a ClipModel folder")
    parser.add_argument("--out", default=None, help="write the result as JSON here too")
    args = parser.parse_args(argv)

    from alignkit.rewards.spm import load_spm, tiny_random_spm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.model == "tiny_random":
        cfg = ModelConfig(name="tiny_sd", family="sd", init="random", resolution=32)
    else:
        from alignkit.spm import native_resolution

        path = asset_path("base_model") if args.model == "tiny" else args.model
        cfg = ModelConfig(name="bench", family="sd", path=path, resolution=native_resolution(path))
    backbone = build_backbone(cfg, device)
    backbone.unet.eval()
    spm = tiny_random_spm() if args.spm == "tiny_random" else load_spm(args.spm)
    spm = spm.eval().requires_grad_(False).to(device)
    pool = PoolSampler(
        backbone,
        spm,
        PoolConfig(
            k=args.k,
            threshold=0.0,
            steps=args.steps,
            eta=1.0,
            divert_start_step=args.divert_start_step,
            num_inner_steps=args.num_inner_steps,
        ),
    )
    prompts = [f"prompt {i}" for i in range(args.prompts)]
    seeds = list(range(args.prompts))
    rows = _count_unet_rows(backbone)

    def plain() -> None:
        trajectory = sample_with_log_probs(
            backbone, prompts, seeds, torch.Generator().manual_seed(0), args.steps, eta=1.0
        )
        backbone.decode_latents(trajectory.latents[:, -1])

    def spo_round() -> None:
        pool.sample(prompts, torch.Generator().manual_seed(0))

    def timed(fn) -> tuple[float, int]:
        rows.clear()
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, sum(rows)

    timed(plain), timed(spo_round)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "spo_round": []}
    unet_rows = {}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("spo_round", spo_round)):
            seconds, unet_rows[name] = timed(fn)
            times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "device": device,
        "model": args.model,
        "prompts": args.prompts,
        "k": args.k,
        "steps": args.steps,
        "divert_start_step": args.divert_start_step,
        "num_inner_steps": args.num_inner_steps,
        "seconds_median": medians,
        "seconds_all": times,
        "unet_rows_per_round": unet_rows,
        "ratio_spo_round_to_plain": medians["spo_round"] / medians["plain"],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
