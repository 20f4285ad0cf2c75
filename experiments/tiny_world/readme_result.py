"""Run the default job and write its result table and image grid into the README.

    python experiments/tiny_world/readme_result.py [--readme README.md]

The README's result section is this script's output, not a hand edit: it runs
``python -m alignkit`` exactly as a newcomer does, then replaces the text between the
``default-job-result`` markers with the evaluation table, the wall time and the grid
(copied to ``docs/images/default_job_grid.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignkit.evaluation import results_table

START, END = "<!-- default-job-result:start -->", "<!-- default-job-result:end -->"
GRID = Path("docs/images/default_job_grid.png")


def run_default_job(run_dir: Path) -> float:
    """Seconds the whole command took (training, evaluation and the grid)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "alignkit", f"output_dir={run_dir}", "trainer.progress_bar=false"],
        check=True,
    )
    return time.perf_counter() - started


def result_section(run_dir: Path, seconds: float) -> str:
    evaluation = json.loads((run_dir / "eval.json").read_text())
    cores = os.cpu_count()
    return "\n".join(
        [
            START,
            f"`python -m alignkit` on {cores} CPU cores ({platform.machine()}, torch "
            f"{torch.__version__}): {seconds / 60:.1f} minutes in all. Held-out prompts x seeds "
            f"({evaluation['samples']} images each side), aligned vs base with the same seeds:",
            "",
            results_table(evaluation),
            "",
            f"![base (left) vs aligned (right), same seeds]({GRID.as_posix()})",
            "",
            "Reproduce: `python experiments/tiny_world/readme_result.py` (runs the default job "
            "and rewrites this section).",
            END,
        ]
    )


def replace_section(readme: str, section: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"the README has no {START} ... {END} section to replace")
    head, rest = readme.split(START, 1)
    return head + section + rest.split(END, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        seconds = run_default_job(run_dir)
        GRID.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "eval_grid.png", GRID)
        section = result_section(run_dir, seconds)
    args.readme.write_text(replace_section(args.readme.read_text(), section))
    print(section)


if __name__ == "__main__":
    main()
