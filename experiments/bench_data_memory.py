"""Peak memory against dataset size, and cache-build speed against process count.

Writes synthetic preference pairs in the Pick-a-Pic schema (random smooth 256 px JPEGs,
parquet files of 1000 rows in row groups of 100), then runs ``python -m alignkit`` (tiny_sd,
DPO, 2 steps, a fresh latent cache) in a subprocess per measurement:

* peak RSS of the whole run (cache build + 2 steps) for a small and a large dataset: with
  rows read by row group and the cache read in place it should barely grow (target: the
  large run within 1.1x of the small one);
* cache-build pairs/s with 1 process and with ``accelerate launch --cpu --num_processes 2``.

    python experiments/bench_data_memory.py --small 2000 --large 32000
    python experiments/bench_data_memory.py --small 500 --large 2000   # a quick check
    python experiments/bench_data_memory.py --parallel-rows 2000       # 2 processes on 2k rows

This is a benchmark, not a test: it takes minutes at 32k rows and wants idle cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FILE_ROWS = 1000
GROUP_ROWS = 100
IMAGE_SIZE = 256
_BUILD_RATE = re.compile(r"latent cache ready: .* in ([\d.]+) s")


def random_jpeg(rng: np.random.Generator) -> bytes:
    """A smooth random 256 px image (an upsampled 8x8 grid), about 5 KB as a JPEG."""
    grid = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_pairs(folder: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` synthetic pairs (one in ten a tie) under ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, rows, FILE_ROWS)):
        count = min(FILE_ROWS, rows - start)
        ties = rng.random(count) < 0.1
        first_wins = rng.random(count) < 0.5
        label_0 = np.where(ties, 0.5, first_wins.astype(float))
        table = pa.table(
            {
                "caption": [f"synthetic prompt {(start + row) // 3}" for row in range(count)],
                "jpg_0": [random_jpeg(rng) for _ in range(count)],
                "jpg_1": [random_jpeg(rng) for _ in range(count)],
                "label_0": label_0,
                "label_1": 1.0 - label_0,
            }
        )
        pq.write_table(table, folder / f"train-{number:05d}.parquet", row_group_size=GROUP_ROWS)
    return folder


def run_job(data: Path, scratch: Path, processes: int) -> dict:
    """Cache build + 2 DPO steps in a subprocess: its peak RSS and the cache-build time."""
    job = [
        "-m",
        "alignkit",
        "model=tiny_sd",
        "data=pairs",
        f"data.path={data}",
        f"data.cache_dir={scratch / 'cache'}",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
        "eval.enabled=false",
        f"output_dir={scratch / 'run'}",
    ]
    if processes == 1:
        command = [sys.executable, *job]
    else:
        launch = ["-m", "accelerate.commands.launch", "--cpu", f"--num_processes={processes}"]
        command = [sys.executable, *launch, *job]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-4000:]}")
    build_seconds = max(float(found) for found in _BUILD_RATE.findall(output))
    return {
        "processes": processes,
        # ru_maxrss of a waited child: its own peak, or its largest child's (KB on Linux)
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cache_build_s": build_seconds,
        "total_s": seconds,
    }


def pairs_in_cache(scratch: Path) -> int:
    [manifest] = (scratch / "cache").glob("*/manifest.json")
    return json.loads(manifest.read_text())["num_pairs"]


def measure(rows: int, processes: int, root: Path) -> dict:
    data = root / f"pairs-{rows}"
    if not data.exists():
        write_pairs(data, rows)
    scratch = Path(tempfile.mkdtemp(prefix=f"run-{rows}-{processes}-", dir=root))
    result = run_job(data, scratch, processes)
    pairs = pairs_in_cache(scratch)
    result.update(rows=rows, pairs=pairs, pairs_per_s=pairs / result["cache_build_s"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="rows of the small dataset")
    parser.add_argument("--large", type=int, default=32000, help="rows of the large dataset")
    parser.add_argument(
        "--parallel-rows",
        type=int,
        help="rows of the 1- vs 2-process cache-build comparison (default: --large)",
    )
    parser.add_argument("--workdir", type=Path, help="where data and caches go (default: tmp)")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-data-"))
    root.mkdir(parents=True, exist_ok=True)
    parallel_rows = args.parallel_rows or args.large
    small, large = measure(args.small, 1, root), measure(args.large, 1, root)
    single = {args.small: small, args.large: large}.get(parallel_rows)
    single = single or measure(parallel_rows, 1, root)
    parallel = measure(parallel_rows, 2, root)
    runs = [small, large, parallel] + ([single] if single not in (small, large) else [])
    report = {
        "runs": runs,
        "peak_rss_ratio_large_over_small": large["peak_rss_mb"] / small["peak_rss_mb"],
        "build_speedup_2_over_1_processes": parallel["pairs_per_s"] / single["pairs_per_s"],
    }
    print(json.dumps(report, indent=2))
    print(
        f"peak RSS: {small['peak_rss_mb']:.0f} MB at {args.small} rows, "
        f"{large['peak_rss_mb']:.0f} MB at {args.large} rows "
        f"({report['peak_rss_ratio_large_over_small']:.2f}x; target <= 1.1x)"
    )
    print(
        f"cache build at {parallel_rows} rows: {single['pairs_per_s']:.0f} pairs/s with 1 process, "
        f"{parallel['pairs_per_s']:.0f} pairs/s with 2 "
        f"({report['build_speedup_2_over_1_processes']:.2f}x)"
    )


if __name__ == "__main__":
    main()
