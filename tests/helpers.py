"""Small Pick-a-Pic-schema parquet folders and a fake encoder, for tests of the data layer.

Images are PNG by default (lossless), so a test can read crops, flips and which side won
straight from pixel values: red codes the row, green marks the preferred image.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from PIL import Image

from alignkit.config import register_configs

#: (height, width) of the images, cycled over rows.
SIZES = ((40, 48), (56, 40))
PREFERRED_GREEN = 200
OTHER_GREEN = 40
TIE_ROWS = (4,)
SWAPPED_ROWS = (2,)

ImageMaker = Callable[[int, bool, int, int], np.ndarray]


def row_red(row: int) -> int:
    """The red value that identifies ``row`` (distinct for up to 13 rows)."""
    return (row * 19 + 7) % 256


def caption_of(row: int) -> str:
    """Rows 10 and 11 repeat the captions of rows 0 and 1, as Pick-a-Pic repeats prompts."""
    return f"a picture of thing {row % 10}"


def flat_image(row: int, preferred: bool, height: int, width: int) -> np.ndarray:
    """Uniform colour: red = the row's code, green = preferred or not, blue = 100."""
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = row_red(row)
    image[..., 1] = PREFERRED_GREEN if preferred else OTHER_GREEN
    image[..., 2] = 100
    return image


def gradient_image(row: int, preferred: bool, height: int, width: int) -> np.ndarray:
    """Red = 5 x column, green = 5 x line, blue = preferred or not: crops and flips show."""
    lines, columns = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = 5 * columns
    image[..., 1] = 5 * lines
    image[..., 2] = PREFERRED_GREEN if preferred else OTHER_GREEN
    return image


def encode_image(image: np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def pair_rows(
    rows: int = 12,
    tie_rows: Sequence[int] = TIE_ROWS,
    swapped_rows: Sequence[int] = SWAPPED_ROWS,
    corrupt_rows: Sequence[int] = (),
    sizes: Sequence[tuple[int, int]] = SIZES,
    make_image: ImageMaker = flat_image,
    image_format: str = "PNG",
) -> pd.DataFrame:
    """Rows in the Pick-a-Pic schema; ``jpg_0`` wins unless the row is swapped or a tie.

    A swapped row has ``label_1 > label_0`` and its preferred (green) image in ``jpg_1``; a
    tie row is labelled 0.5/0.5 with the green image in ``jpg_0``; a corrupt row's ``jpg_0``
    is a truncated PNG.
    """
    records = []
    for row in range(rows):
        height, width = sizes[row % len(sizes)]
        swapped = row in swapped_rows
        first = encode_image(make_image(row, not swapped, height, width), image_format)
        second = encode_image(make_image(row, swapped, height, width), image_format)
        if row in corrupt_rows:
            first = first[: len(first) // 2]
        labels = (0.5, 0.5) if row in tie_rows else ((0.0, 1.0) if swapped else (1.0, 0.0))
        records.append(
            {
                "caption": caption_of(row),
                "jpg_0": first,
                "jpg_1": second,
                "label_0": labels[0],
                "label_1": labels[1],
            }
        )
    return pd.DataFrame(records)


def write_pair_folder(
    folder: Path,
    rows: int = 12,
    files: int = 2,
    missing_columns: Sequence[str] = (),
    images_as_dicts: bool = False,
    **row_options,
) -> Path:
    """Write ``pair_rows(rows, **row_options)`` as ``files`` parquet files under ``folder``.

    Files go to ``folder/00/rows.parquet``, ``folder/01/rows.parquet``, ... (so reading must
    recurse, and sorted order is row order). ``images_as_dicts`` stores images as
    ``{"bytes": ..., "path": None}`` as hub datasets do; ``missing_columns`` are left out.
    """
    frame = pair_rows(rows, **row_options)
    if images_as_dicts:
        for column in ("jpg_0", "jpg_1"):
            frame[column] = [{"bytes": data, "path": None} for data in frame[column]]
    frame = frame.drop(columns=list(missing_columns))
    bounds = np.linspace(0, rows, files + 1).round().astype(int)
    for number in range(files):
        part = folder / f"{number:02d}" / "rows.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        frame.iloc[bounds[number] : bounds[number + 1]].to_parquet(part, index=False)
    return folder


def text_embedding(prompt: str) -> torch.Tensor:
    """A fixed pseudo-random ``[4, 8]`` embedding per prompt."""
    generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(4, 8, generator=generator)


class FakeEncoder:
    """An ``ImageTextEncoder`` that average-pools pixels and hashes prompts; counts its calls.

    Latents come back channels-last (non-contiguous), as some VAEs return them.
    """

    def __init__(self, pool: int = 4, name: str = "fake") -> None:
        self.pool = pool
        self.identity = f"{name}-pool{pool}"
        self.image_calls = 0
        self.prompt_calls = 0
        self.largest_image_batch = 0

    def encode_images(
        self, pixels: torch.Tensor, generators: list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Pooled pixels; with ``generators``, plus one unit-normal "posterior" draw each."""
        self.image_calls += 1
        self.largest_image_batch = max(self.largest_image_batch, len(pixels))
        latents = F.avg_pool2d(pixels, self.pool)
        if generators is not None:
            shape = latents.shape[1:]
            latents = latents + torch.stack([torch.randn(shape, generator=g) for g in generators])
        return latents.to(memory_format=torch.channels_last)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        self.prompt_calls += 1
        embeds = torch.stack([text_embedding(prompt) for prompt in prompts])
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": embeds.mean(dim=1)}


def compose_config(*overrides: str) -> DictConfig:
    """The config ``python -m alignkit <overrides>`` would run, composed in process."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="alignkit.conf", version_base=None):
        return compose("config", overrides=list(overrides))
