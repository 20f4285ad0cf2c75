"""Where preference rows come from: a folder of parquet files, one parquet file, or the hub.

Every source opens as a row reader (``alignkit.data.rows``) that yields the Pick-a-Pic
columns in fixed kinds, so nothing downstream cares where the rows were stored, and no
source is ever read whole into memory. A source also states its identity (what the latent
cache is keyed by) without reading rows, so that a cached dataset needs neither the files'
contents nor the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.data.rows import ArrowRows, ParquetRows, StreamedRows
from alignkit.data.schema import (
    COLUMNS,
    IMAGE_COLUMNS,
    DataSourceError,
    SchemaError,
    check_columns,
)

__all__ = ["COLUMNS", "DataSourceError", "HubDataset", "LocalParquet", "SchemaError"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class LocalParquet:
    """Parquet files read in sorted order of their paths relative to ``root``."""

    root: Path
    files: tuple[Path, ...]

    def describe(self) -> str:
        return str(self.root)

    def identity(self) -> dict[str, Any]:
        """Relative paths, sizes and modification times: a changed file changes the identity."""
        entries = []
        for file in self.files:
            stat = file.stat()
            relative = file.name if file == self.root else file.relative_to(self.root).as_posix()
            entries.append([relative, stat.st_size, stat.st_mtime_ns])
        return {"local": entries}

    def open(self, max_rows: int | None) -> ParquetRows:
        """The first ``max_rows`` rows (all if ``None``), indexed from the files' footers."""
        return ParquetRows(self.files, max_rows)


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face hub (or in its local cache), loaded with ``datasets``.

    ``streaming`` reads it over the network as a stream instead of downloading it first.
    """

    name: str
    split: str
    streaming: bool = False

    def describe(self) -> str:
        return f"hub dataset {self.name!r} (split {self.split!r})"

    def identity(self) -> dict[str, Any]:
        return {"hub": self.name, "split": self.split}

    def open(self, max_rows: int | None) -> ArrowRows | StreamedRows:
        """The first ``max_rows`` rows: memory-mapped (its bytes stay on disk), or streamed."""
        if self.streaming:
            return StreamedRows(self._stream, max_rows, self.describe())
        dataset = self._load_dataset()
        check_columns(list(dataset.column_names), self.describe())
        rows = len(dataset) if max_rows is None else min(max_rows, len(dataset))
        return ArrowRows(dataset.with_format("arrow")[0:rows], self.describe())

    def _stream(self, columns: Sequence[str] | None) -> Iterator[dict]:
        """The records of a fresh stream (only ``columns``, if given), image bytes undecoded."""
        import datasets

        stream = self._load_dataset(streaming=True)
        if stream.column_names is not None:  # known up front for most hub datasets
            check_columns(list(stream.column_names), self.describe())
        for name in IMAGE_COLUMNS:
            if isinstance((stream.features or {}).get(name), datasets.Image):
                stream = stream.cast_column(name, datasets.Image(decode=False))
        if columns is not None:
            stream = stream.select_columns(list(columns))
        return iter(stream)

    def _load_dataset(self, streaming: bool = False) -> Any:
        try:
            import datasets
        except ImportError:
            raise DataSourceError(
                f"data.path={self.name!r} is not a local path, so it would be loaded from the "
                "hub, which needs the 'datasets' package: pip install datasets (or "
                "alignkit[hub]); or pass a local folder of parquet files as data.path"
            ) from None
        try:
            if streaming:
                return datasets.load_dataset(self.name, split=self.split, streaming=True)
            return datasets.load_dataset(self.name, split=self.split)
        except FileNotFoundError as err:
            raise DataSourceError(
                f"{self.describe()} was not found ({err}), and no local file or folder "
                f"{self.name!r} exists either. Check the id (owner/name) and the split, or pass "
                "a local folder of parquet files as data.path"
            ) from None
        except ConnectionError as err:
            raise DataSourceError(
                f"{self.describe()} cannot be reached ({err}): the hub is offline or "
                "unreachable from this machine, so nothing can be downloaded. Download the "
                "dataset elsewhere and pass its local folder of parquet files as data.path"
            ) from None
        except Exception as err:  # datasets raises many kinds; all mean "not loadable here"
            raise DataSourceError(
                f"could not load {self.describe()}: {type(err).__name__}: {err}. Pass a local "
                "folder of parquet files as data.path instead"
            ) from None


def _looks_like_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path)) and not path.endswith(".parquet")


def resolve_source(
    path: str | None, split: str, streaming: bool = False
) -> LocalParquet | HubDataset:
    """The source that ``data.path`` names, checked for existence but not read.

    ``streaming`` applies to hub ids only (local files are read by row group anyway).
    """
    if not path:
        raise DataSourceError(
            "data.path is not set; pass a folder of parquet files, one .parquet file or a hub "
            "dataset id, e.g. data.path=/data/my_pairs or data.path=yuvalkirstain/pickapic_v2"
        )
    local = Path(path).expanduser()
    if local.is_dir():
        files = sorted(
            (file for file in local.rglob("*.parquet") if file.is_file()),
            key=lambda file: file.relative_to(local).as_posix(),
        )
        if not files:
            raise DataSourceError(
                f"data.path={path!r} is a folder without .parquet files (searched recursively); "
                "point it at the folder that holds the Pick-a-Pic parquet files"
            )
        return LocalParquet(local, tuple(files))
    if local.is_file():
        return LocalParquet(local, (local,))
    if _looks_like_hub_id(path):
        return HubDataset(path, split, streaming)
    raise DataSourceError(
        f"data.path={path!r} is neither an existing file or folder nor a hub dataset id "
        "(owner/name); pass an existing folder of parquet files, a .parquet file, or an id "
        "such as yuvalkirstain/pickapic_v2"
    )
