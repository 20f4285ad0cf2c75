"""DRTune vs last-K truncation (and the other peers) at equal compute on the tiny world.

DRTune's paper claims that for low-level rewards (symmetry, layout) training the early
sampling steps matters, and that shallow supervision (last-K truncation, ReFL) fails there.
In miniature: each scheme trains the tiny world's model for the same number of optimizer
steps, on the same prompts, with the same T and the same number K of UNet calls carrying
gradients, on a pixel-level reward (default ``symmetry``: left-right mirror symmetry; also
``left_bright``: left half brighter than the right); then the standard evaluation scores base
vs aligned on the held-out prompts. Measured results: ``experiments/drtune_ablation_report.md``.

    python experiments/drtune_ablation.py --out /tmp/ablation [--schemes drtune draft_k ...]
        [--seeds 0 1 2]

Each run is a plain ``python -m alignkit`` subprocess (``<out>/seed<S>/<scheme>``); the report
(``report.md`` in --out) gives each scheme's mean and spread over the training seeds, then
every run: eval.json's rewards and win rates, and the training time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_scheme(scheme: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = Path(args.out) / f"seed{seed}" / scheme
    command = [
        sys.executable,
        "-m",
        "alignkit",
        f"model={args.model}",
        "data=tiny_prompts",
        "algo=drtune",
        f"reward={args.reward}",
        f"algo.scheme={scheme}",
        f"algo.steps={args.steps}",
        f"algo.train_steps={args.train_steps}",
        f"algo.guidance={args.guidance}",
        f"algo.truncation_min={args.train_steps}",  # alignprop at the same K
        f"algo.truncation_max={args.train_steps}",
        f"trainer.max_steps={args.max_steps}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.lr={args.lr}",
        "trainer.progress_bar=false",
        "eval.enabled=true",
        f"eval.rewards=[{args.reward},oracle]",
        f"eval.seeds_per_prompt={args.eval_seeds}",
        f"seed={seed}",
        f"output_dir={run_dir}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    subprocess.run(command, check=True, env=env)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"eval": evaluation, "summary": summary, "last_train_reward": rows[-1]["reward"]}


def mean_std(values: list[float], spec: str = ".4f") -> str:
    """``mean ± std`` (population std: the seeds are all the runs there are)."""
    return f"{statistics.fmean(values):{spec}} ± {statistics.pstdev(values):{spec}}"


def report(results: dict[int, dict[str, dict]], args: argparse.Namespace) -> str:
    seeds = list(results)
    schemes = list(results[seeds[0]])
    lines = [
        f"# DRTune ablation: reward={args.reward}, T={args.steps}, K={args.train_steps}, "
        f"{args.max_steps} steps x {args.batch_size} prompts, lr={args.lr}, "
        f"seeds={','.join(map(str, seeds))}",
        "",
        f"Over {len(seeds)} training seed(s), mean ± std:",
        "",
        "| scheme | reward base | reward aligned | win rate | oracle win rate | train s |",
        "|---|---|---|---|---|---|",
    ]
    for scheme in schemes:
        runs = [results[seed][scheme] for seed in seeds]
        target = [run["eval"]["rewards"][args.reward] for run in runs]
        oracle = [run["eval"]["rewards"]["oracle"]["win_rate"]["rate"] for run in runs]
        train_seconds = statistics.fmean(run["summary"]["train_seconds"] for run in runs)
        lines.append(
            f"| {scheme} | {mean_std([t['base'] for t in target])} | "
            f"{mean_std([t['aligned'] for t in target])} | "
            f"{mean_std([t['win_rate']['rate'] for t in target], '.1%')} | "
            f"{mean_std(oracle, '.1%')} | {train_seconds:.0f} |"
        )
    lines += [
        "",
        "Every run (win rates with their 95% CI over the held-out prompts x eval seeds):",
        "",
        "| seed | scheme | reward base | reward aligned | win rate (95% CI) | oracle win rate |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        for scheme in schemes:
            result = results[seed][scheme]
            target = result["eval"]["rewards"][args.reward]
            oracle = result["eval"]["rewards"]["oracle"]["win_rate"]
            win = target["win_rate"]
            lines.append(
                f"| {seed} | {scheme} | {target['base']:.4f} | {target['aligned']:.4f} | "
                f"{win['rate']:.1%} ({win['ci_low']:.1%}-{win['ci_high']:.1%}) | "
                f"{oracle['rate']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--schemes", nargs="+", default=["drtune", "draft_k"])
    parser.add_argument("--reward", default="symmetry")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-seeds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {
        seed: {scheme: run_scheme(scheme, seed, args) for scheme in args.schemes}
        for seed in args.seeds
    }
    text = report(results, args)
    (Path(args.out) / "report.md").write_text(text)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
