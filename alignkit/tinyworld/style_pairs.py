"""Style pairs for the tiny world: a styled render is preferred over the render itself.

Each train prompt's renders are seen at the tiny model's 32 pixels (averaged 2x2, as the base
model was trained), styled with ``styles.apply_style``, and written as Pick-a-Pic rows: the
styled image wins (label 1), the original loses (label 0). The winner alternates between
``jpg_0`` (even rows) and ``jpg_1`` (odd rows), as in data where raters saw random sides.
Images are PNG, so a reader decodes exactly the pixels that were scored.

    python -m alignkit.tinyworld.style_pairs --out alignkit/tinyworld/assets/style_pairs

writes ``<out>/<style>/part-00000.parquet`` for every style and ``<out>/report.json`` (the
mean style score of the originals and of the styled images, per style).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from alignkit.tinyworld.grammar import train_prompts
from alignkit.tinyworld.pairs import write_parquet_folder
from alignkit.tinyworld.render import render
from alignkit.tinyworld.styles import STYLES, apply_style, style_score

MODEL_PIXELS_DOWNSCALE = 2  # 64-pixel renders -> the tiny model's 32 pixels


def model_view(renders: np.ndarray) -> torch.Tensor:
    """uint8 renders ``[B, 64, 64, 3]`` -> float ``[B, 3, 32, 32]`` in [0, 1], 2x2 averaged."""
    pixels = torch.from_numpy(renders).permute(0, 3, 1, 2).double() / 255.0
    return F.avg_pool2d(pixels, MODEL_PIXELS_DOWNSCALE)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [0, 1] -> uint8 ``[B, H, W, 3]``, rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> ``[3, H, W]`` float in [0, 1]."""
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).double() / 255.0


def original_renders(
    prompts: Sequence[str], per_prompt: int, seed: int
) -> tuple[list[str], np.ndarray]:
    """Captions and uint8 model-view originals; render seeds ``seed * per_prompt + j``."""
    rows = [(p, seed * per_prompt + j) for p in prompts for j in range(per_prompt)]
    renders = np.stack([render(p, s) for p, s in rows])
    return [p for p, _ in rows], to_uint8(model_view(renders))


def style_pair_table(style: str, captions: Sequence[str], originals: np.ndarray) -> pd.DataFrame:
    """Pick-a-Pic rows where the styled copy of each original wins."""
    pixels = torch.from_numpy(originals).permute(0, 3, 1, 2).double() / 255.0
    styled = to_uint8(apply_style(style, pixels))
    winners = [encode_png(image) for image in styled]
    losers = [encode_png(image) for image in originals]
    winner_first = np.arange(len(captions)) % 2 == 0
    return pd.DataFrame(
        {
            "caption": list(captions),
            "jpg_0": [w if first else lo for w, lo, first in zip(winners, losers, winner_first)],
            "jpg_1": [lo if first else w for w, lo, first in zip(winners, losers, winner_first)],
            "label_0": winner_first.astype(float),
            "label_1": (~winner_first).astype(float),
        }
    )


def winners_and_losers(table: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded ``[N, 3, H, W]`` winners and losers of a style-pair table, by its labels."""
    first_wins = (table["label_0"] > table["label_1"]).to_numpy()
    images_0 = torch.stack([decode_png(b) for b in table["jpg_0"]])
    images_1 = torch.stack([decode_png(b) for b in table["jpg_1"]])
    mask = torch.tensor(first_wins)[:, None, None, None]
    return torch.where(mask, images_0, images_1), torch.where(mask, images_1, images_0)


def write_style_pairs(
    out: str | Path, styles: Sequence[str], per_prompt: int = 1, seed: int = 0
) -> dict:
    """Write one parquet folder per style under ``out``; returns (and writes) the report."""
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be >= 1, got {per_prompt}")
    out = Path(out)
    captions, originals = original_renders(train_prompts(), per_prompt, seed)
    report: dict = {"pairs_per_style": len(captions), "per_prompt": per_prompt, "seed": seed}
    for style in styles:
        table = style_pair_table(style, captions, originals)
        write_parquet_folder(table, out / style)
        winners, losers = winners_and_losers(table)
        report[style] = {
            "description": STYLES[style].description,
            "original_score": float(style_score(style, losers).mean()),
            "styled_score": float(style_score(style, winners).mean()),
        }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the tiny world's style pairs.")
    parser.add_argument("--out", type=Path, required=True, help="folder for <style>/ folders")
    parser.add_argument("--styles", nargs="+", choices=sorted(STYLES), default=list(STYLES))
    # our choice: one render per train prompt keeps the three styles' pairs under 1 MB
    parser.add_argument("--per-prompt", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = write_style_pairs(args.out, args.styles, args.per_prompt, args.seed)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
