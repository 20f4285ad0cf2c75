"""Evaluation: base vs aligned on a prompt set x seeds, scored by rewards, with a picture.

Both models are the same Backbone: the base is the reference prediction (adapters off, or the
frozen copy), so the comparison costs no second model in memory; the base side is computed
once per process for the same settings and base model (``alignkit.base_samples``), so a
sweep's runs share it. Every (prompt, seed) is one comparison; the win rate counts ties as one
half and carries a 95% normal-approximation confidence interval. ``eval.json`` keeps every
comparison's prompt, seed and scores, so that ``alignkit.report`` can pair two runs' samples
of the same prompt and seed.

    python -m alignkit.evaluation <run folder> [key=value ...]   # evaluate a saved run
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from alignkit.base_samples import base_side
from alignkit.config import EvalConfig
from alignkit.data.prompts import load_prompt_list
from alignkit.models import Backbone, ModelLoadError
from alignkit.rewards import build_reward
from alignkit.sampling import generate_images
from alignkit.user_errors import one_line_errors


@dataclass
class WinRate:
    rate: float
    ci_low: float
    ci_high: float
    n: int


def win_rate(aligned: torch.Tensor, base: torch.Tensor) -> WinRate:
    """Share of comparisons the aligned sample wins (ties = 1/2), with a 95% CI."""
    outcomes = (aligned > base).float() + 0.5 * (aligned == base).float()
    n = outcomes.numel()
    rate = outcomes.mean().item()
    half_width = 1.96 * outcomes.std(unbiased=False).item() / math.sqrt(n) if n > 1 else 0.0
    return WinRate(rate, max(0.0, rate - half_width), min(1.0, rate + half_width), n)


def image_grid(base: torch.Tensor, aligned: torch.Tensor, rows: int, cols: int) -> Image.Image:
    """``rows`` prompts; per row ``cols`` base samples, then the same seeds aligned."""
    tile = max(96, base.shape[-1])
    gap, header = 6, 18
    width = 2 * cols * tile + gap
    canvas = Image.new("RGB", (width, header + rows * tile), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), "base", fill="black")
    draw.text((cols * tile + gap + 4, 3), "aligned (same seeds)", fill="black")
    for row in range(rows):
        for col in range(cols):
            index = row * cols + col
            for side, images in enumerate((base, aligned)):
                pixels = (images[index].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
                picture = Image.fromarray(pixels).resize((tile, tile), Image.NEAREST)
                x = side * (cols * tile + gap) + col * tile
                canvas.paste(picture, (x, header + row * tile))
    return canvas


def evaluate(backbone: Backbone, cfg: EvalConfig, out_dir: str | Path) -> dict:
    """Generate, score, compare; write ``eval.json`` and ``eval_grid.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    if not cfg.prompts or not cfg.rewards:
        raise ValueError(
            "evaluation needs prompts and rewards: set eval.prompts=<text file, one prompt a "
            "line> and eval.rewards=[pickscore,...] (the tiny world's model sets its own)"
        )
    prompts = load_prompt_list(cfg.prompts)
    grid_rows = min(cfg.grid_prompts, len(prompts))
    grid_cols = min(cfg.grid_seeds, cfg.seeds_per_prompt)
    every_prompt = [p for p in prompts for _ in range(cfg.seeds_per_prompt)]
    seeds = [s for _ in prompts for s in range(cfg.seeds_per_prompt)]
    settings = {"steps": cfg.steps, "guidance": cfg.guidance, "batch_size": cfg.batch_size}
    rewards = {name: build_reward(name) for name in cfg.rewards}
    picked = [p * cfg.seeds_per_prompt + s for p in range(grid_rows) for s in range(grid_cols)]
    base = base_side(backbone, every_prompt, seeds, settings, rewards, picked)
    aligned = generate_images(backbone, every_prompt, seeds, reference=False, **settings)
    results: dict = {
        "prompts": cfg.prompts,
        "samples": len(every_prompt),
        "comparisons": {"prompt": every_prompt, "seed": seeds},
        "rewards": {},
    }
    for name, reward in rewards.items():
        base_scores = base.scores[name]
        aligned_scores = reward(aligned, every_prompt).float()
        results["rewards"][name] = {
            "base": base_scores.mean().item(),
            "aligned": aligned_scores.mean().item(),
            "win_rate": asdict(win_rate(aligned_scores, base_scores)),
            "scores": {"base": base_scores.tolist(), "aligned": aligned_scores.tolist()},
        }
    grid = image_grid(base.grid_images, aligned[picked], grid_rows, grid_cols)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid.save(out_dir / "eval_grid.png")
    results["grid"] = "eval_grid.png"
    (out_dir / "eval.json").write_text(json.dumps(results, indent=1))
    return results


def results_table(results: dict) -> str:
    """A Markdown table: reward, base mean, aligned mean, win rate with its CI."""
    lines = [
        "| reward | base | aligned | win rate vs base (95% CI) |",
        "|---|---|---|---|",
    ]
    for name, entry in results["rewards"].items():
        win = entry["win_rate"]
        lines.append(
            f"| {name} | {entry['base']:.4f} | {entry['aligned']:.4f} | "
            f"{win['rate']:.1%} ({win['ci_low']:.1%}–{win['ci_high']:.1%}, n={win['n']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from alignkit.app import evaluate_saved_run

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    with one_line_errors(ValueError, FileNotFoundError, ModelLoadError):
        results = evaluate_saved_run(Path(argv[0]), argv[1:])
    print(results_table(results))


if __name__ == "__main__":
    main()
