"""Style pairs from a folder of images: the styled copy of each image is preferred.

The layout (``data=style_pairs data.path=/folder``)::

    original/NAME.png     the image as it is (.png, .jpg, .jpeg, .webp or .bmp)
    styled/NAME.png       the same image in the target style (same NAME, any of those types)
    captions.tsv          one line per pair: NAME, a tab, the prompt of the image

Each NAME becomes a Pick-a-Pic row: ``caption``, ``jpg_0`` = the styled image's bytes
(label 1), ``jpg_1`` = the original's (label 0). Other files are ignored, and so are
captions of names without images; anything else that does not fit is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from alignkit.data.rows import ArrowRows
from alignkit.data.schema import DataSourceError, normalize_table

ORIGINAL, STYLED, CAPTIONS = "original", "styled", "captions.tsv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LAYOUT = (
    "a style folder holds original/NAME.png and styled/NAME.png (the same NAME; .png, .jpg, "
    ".jpeg, .webp or .bmp) and captions.tsv, one line per pair: NAME<tab>prompt"
)
PREVIEW = 5


def is_style_folder(folder: Path) -> bool:
    """Whether ``folder`` uses the style layout (it has an original/ or a styled/ folder)."""
    return (folder / ORIGINAL).is_dir() or (folder / STYLED).is_dir()


def _preview(names: list[str]) -> str:
    shown = ", ".join(names[:PREVIEW])
    return shown + (f" and {len(names) - PREVIEW} more" if len(names) > PREVIEW else "")


def _images_by_name(folder: Path) -> dict[str, Path]:
    """NAME -> image file of one side; two files with one NAME are an error."""
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if file.stem in found:
            raise DataSourceError(
                f"{folder} has two images named {file.stem!r} ({found[file.stem].name} and "
                f"{file.name}); keep one per name"
            )
        found[file.stem] = file
    return found


def read_captions(path: Path) -> dict[str, str]:
    """NAME -> prompt from ``captions.tsv``; blank lines skipped, a repeated NAME an error."""
    captions: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, tab, caption = line.partition("\t")
        if not tab or not name.strip():
            raise DataSourceError(
                f"{path} line {number} is not NAME<tab>prompt: {line[:60]!r}; {LAYOUT}"
            )
        if name.strip() in captions:
            raise DataSourceError(f"{path} gives {name.strip()!r} twice (line {number})")
        captions[name.strip()] = caption.strip()
    return captions


@dataclass(frozen=True)
class StyleFolder:
    """The pairs of a style folder, checked on opening and read on ``load``."""

    root: Path
    names: tuple[str, ...]
    originals: tuple[Path, ...]
    styled: tuple[Path, ...]
    captions: tuple[str, ...]

    @classmethod
    def scan(cls, root: Path) -> StyleFolder:
        """Check the layout (see the module docstring) without reading any image."""
        for part in (ORIGINAL, STYLED):
            if not (root / part).is_dir():
                raise DataSourceError(f"{root} has no {part}/ folder; {LAYOUT}")
        originals, styled = _images_by_name(root / ORIGINAL), _images_by_name(root / STYLED)
        for side, have, other in ((STYLED, originals, styled), (ORIGINAL, styled, originals)):
            lacking = sorted(set(have) - set(other))
            if lacking:
                raise DataSourceError(
                    f"{root / side} lacks the image(s) {_preview(lacking)}; every image needs "
                    f"one of the same name in both {ORIGINAL}/ and {STYLED}/"
                )
        if not originals:
            raise DataSourceError(f"{root} has no image pairs; {LAYOUT}")
        if not (root / CAPTIONS).is_file():
            raise DataSourceError(f"{root} has no {CAPTIONS}; {LAYOUT}")
        captions = read_captions(root / CAPTIONS)
        names = tuple(sorted(originals))
        uncaptioned = [name for name in names if name not in captions]
        if uncaptioned:
            raise DataSourceError(
                f"{root / CAPTIONS} has no line for {_preview(uncaptioned)}; add NAME<tab>prompt"
            )
        return cls(
            root,
            names,
            tuple(originals[name] for name in names),
            tuple(styled[name] for name in names),
            tuple(captions[name] for name in names),
        )

    def describe(self) -> str:
        return f"style folder {self.root}"

    def identity(self) -> dict[str, Any]:
        """Relative paths, sizes and modification times of every file read."""
        files = (self.root / CAPTIONS, *self.originals, *self.styled)
        entries = []
        for file in files:
            stat = file.stat()
            entries.append([file.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime_ns])
        return {"style_folder": entries}

    def open(self, max_rows: int | None) -> ArrowRows:
        """The rows as every source gives them (a style folder is small: read in memory)."""
        return ArrowRows(self.table(max_rows), self.describe())

    def table(self, max_rows: int | None) -> pa.Table:
        """Pick-a-Pic rows, styled image first and preferred, in sorted NAME order."""
        count = len(self.names) if max_rows is None else min(max_rows, len(self.names))
        table = pa.table(
            {
                "caption": list(self.captions[:count]),
                "jpg_0": [path.read_bytes() for path in self.styled[:count]],
                "jpg_1": [path.read_bytes() for path in self.originals[:count]],
                "label_0": [1.0] * count,
                "label_1": [0.0] * count,
            }
        )
        return normalize_table(table, self.describe())
