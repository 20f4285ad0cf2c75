"""Preference pairs in the Pick-a-Pic schema, labelled by the tiny world's judge.

Columns: ``caption`` (str), ``jpg_0``/``jpg_1`` (JPEG bytes, quality 95) and
``label_0``/``label_1`` (1.0/0.0 for a preference, 0.5/0.5 for a tie). The judge scores the
decoded JPEGs, i.e. exactly what a reader of the folder sees, so re-judging reproduces labels.

    python -m alignkit.tinyworld.pairs --out DIR --pairs-per-prompt N --split train --seed 0
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from alignkit.tinyworld.grammar import PromptSpec, heldout_prompts, train_prompts
from alignkit.tinyworld.judge import judge_scores
from alignkit.tinyworld.render import render

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
JPEG_QUALITY = 95
DEFAULT_TIE_MARGIN = 0.02
SPLITS = {"train": train_prompts, "heldout": heldout_prompts}


def label_pair(score_0: float, score_1: float, tie_margin: float) -> tuple[float, float]:
    """(1, 0) or (0, 1) for the higher score; (0.5, 0.5) when they differ by <= tie_margin."""
    if abs(score_0 - score_1) <= tie_margin:
        return 0.5, 0.5
    return (1.0, 0.0) if score_0 > score_1 else (0.0, 1.0)


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pairs_from_images(
    prompts: Sequence[str | PromptSpec],
    images_0: Sequence[np.ndarray],
    images_1: Sequence[np.ndarray],
    tie_margin: float = DEFAULT_TIE_MARGIN,
) -> pd.DataFrame:
    """One judged row per (prompt, image_0, image_1); images uint8 ``[H, W, 3]``."""
    if not len(prompts) == len(images_0) == len(images_1):
        raise ValueError(
            f"{len(prompts)} prompts, {len(images_0)} first and {len(images_1)} second images"
        )
    captions = [p.text if isinstance(p, PromptSpec) else p for p in prompts]
    jpgs_0 = [encode_jpeg(np.asarray(im)) for im in images_0]
    jpgs_1 = [encode_jpeg(np.asarray(im)) for im in images_1]
    scores = zip(_judge_jpegs(jpgs_0, captions), _judge_jpegs(jpgs_1, captions))
    labels = np.array([label_pair(a, b, tie_margin) for a, b in scores], float).reshape(-1, 2)
    return pd.DataFrame(
        {
            "caption": captions,
            "jpg_0": jpgs_0,
            "jpg_1": jpgs_1,
            "label_0": labels[:, 0],
            "label_1": labels[:, 1],
        }
    )


def _judge_jpegs(jpgs: list[bytes], captions: list[str]) -> list[float]:
    if not jpgs:
        return []
    return judge_scores(np.stack([decode_jpeg(j) for j in jpgs]), captions).tolist()


def render_pairs(
    prompts: Sequence[str | PromptSpec],
    pairs_per_prompt: int,
    seed: int = 0,
    tie_margin: float = DEFAULT_TIE_MARGIN,
) -> pd.DataFrame:
    """Pairs of two renderer samples of the same prompt (distinct seeds), prompt by prompt.

    Image seeds are ``seed * 2 * pairs_per_prompt + 2 * pair + side``, so different ``seed``
    values never share an image.
    """
    base = seed * 2 * pairs_per_prompt
    rows = [(p, base + 2 * j) for p in prompts for j in range(pairs_per_prompt)]
    return pairs_from_images(
        [p for p, _ in rows],
        [render(p, s) for p, s in rows],
        [render(p, s + 1) for p, s in rows],
        tie_margin,
    )


def write_parquet_folder(
    df: pd.DataFrame, folder: str | Path, rows_per_file: int = 1000
) -> list[Path]:
    """Write ``part-00000.parquet``, ``part-00001.parquet``, ... (at least one file)."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    starts = range(0, max(len(df), 1), rows_per_file)
    paths = []
    for part, start in enumerate(starts):
        path = folder / f"part-{part:05d}.parquet"
        df.iloc[start : start + rows_per_file].to_parquet(path, index=False)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write judged tiny-world preference pairs.")
    parser.add_argument("--out", type=Path, required=True, help="folder for the parquet files")
    parser.add_argument("--pairs-per-prompt", type=int, default=8)
    parser.add_argument("--split", choices=sorted(SPLITS), default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tie-margin", type=float, default=DEFAULT_TIE_MARGIN)
    parser.add_argument("--rows-per-file", type=int, default=1000)
    args = parser.parse_args(argv)
    df = render_pairs(SPLITS[args.split](), args.pairs_per_prompt, args.seed, args.tie_margin)
    paths = write_parquet_folder(df, args.out, args.rows_per_file)
    ties = float((df["label_0"] == 0.5).mean()) if len(df) else 0.0
    print(f"wrote {len(df)} pairs ({ties:.1%} ties) to {len(paths)} file(s) in {args.out}")


if __name__ == "__main__":
    main()
