"""Where preference rows come from: a folder of parquet files, one parquet file, or the hub.

Every source yields one Arrow table with the Pick-a-Pic columns in fixed kinds (text, image
bytes, float64 labels), so nothing downstream cares where the rows were stored. Image bytes
are never copied (a hub dataset's table stays memory-mapped). A
source also states its identity (what the latent cache is keyed by) without reading rows,
so that a cached dataset needs neither the files' contents nor the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
LABEL_COLUMNS = ("label_0", "label_1")
EXPECTED_SCHEMA = (
    "expected the Pick-a-Pic schema:\n"
    "  caption  string                 the prompt\n"
    "  jpg_0    binary                 encoded image bytes (JPEG, PNG, ...) or {'bytes': ...}\n"
    "  jpg_1    binary                 encoded image bytes (JPEG, PNG, ...) or {'bytes': ...}\n"
    "  label_0  float                  1 if jpg_0 is preferred, 0 if not, 0.5 for a tie\n"
    "  label_1  float                  1 if jpg_1 is preferred, 0 if not, 0.5 for a tie"
)
if TYPE_CHECKING:
    from alignkit.data.style_folder import StyleFolder

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_READ_BATCH_ROWS = 1024


class DataSourceError(ValueError):
    """``data.path`` names nothing that can be read."""


class SchemaError(DataSourceError):
    """The rows lack Pick-a-Pic columns or hold values of the wrong type."""


def _normalize_images(column: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        column = pc.struct_field(column, "bytes")
        kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return column
    raise SchemaError(
        f"column {name!r} of {where} holds {kind}, not image bytes; {EXPECTED_SCHEMA}"
    )


def _normalize_labels(column: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    try:
        return column.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise SchemaError(
            f"column {name!r} of {where} holds {column.type}, not numbers; {EXPECTED_SCHEMA}"
        ) from None


def check_columns(present: list[str], where: str) -> None:
    """Raise ``SchemaError`` naming the Pick-a-Pic columns that ``present`` lacks."""
    missing = [name for name in COLUMNS if name not in present]
    if missing:
        raise SchemaError(
            f"{where} lacks column(s) {', '.join(missing)} (it has: {', '.join(present)}); "
            f"{EXPECTED_SCHEMA}"
        )


def normalize_table(table: pa.Table, where: str) -> pa.Table:
    """The five Pick-a-Pic columns: text, image bytes x2 (binary or large_binary), float64 x2."""
    check_columns(table.column_names, where)
    caption = table.column("caption")
    if not (pa.types.is_string(caption.type) or pa.types.is_large_string(caption.type)):
        raise SchemaError(
            f"column 'caption' of {where} holds {caption.type}, not text; {EXPECTED_SCHEMA}"
        )
    columns = {
        "caption": pc.fill_null(caption, ""),
        **{name: _normalize_images(table.column(name), name, where) for name in IMAGE_COLUMNS},
        **{name: _normalize_labels(table.column(name), name, where) for name in LABEL_COLUMNS},
    }
    return pa.table(columns)


def _concat(tables: list[pa.Table], max_rows: int | None) -> pa.Table:
    table = pa.concat_tables(tables, promote_options="permissive")
    return table if max_rows is None else table.slice(0, max_rows)


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

    def load(self, max_rows: int | None) -> pa.Table:
        tables: list[pa.Table] = []
        rows = 0
        for file in self.files:
            if max_rows is not None and rows >= max_rows:
                break
            table = self._read(file, None if max_rows is None else max_rows - rows)
            tables.append(table)
            rows += table.num_rows
        return _concat(tables, max_rows)

    def _read(self, file: Path, max_rows: int | None) -> pa.Table:
        try:
            reader = pq.ParquetFile(file)
            check_columns(reader.schema_arrow.names, str(file))
            batches = []
            rows = 0
            for batch in reader.iter_batches(batch_size=_READ_BATCH_ROWS, columns=list(COLUMNS)):
                batches.append(batch)
                rows += batch.num_rows
                if max_rows is not None and rows >= max_rows:
                    break
            schema = pa.schema([reader.schema_arrow.field(name) for name in COLUMNS])
            table = pa.Table.from_batches(batches) if batches else schema.empty_table()
        except (OSError, pa.ArrowException) as err:
            raise DataSourceError(
                f"cannot read parquet file {file}: {err}. Re-download or remove it"
            ) from None
        return normalize_table(table, str(file))


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face hub (or in its local cache), loaded with ``datasets``."""

    name: str
    split: str

    def describe(self) -> str:
        return f"hub dataset {self.name!r} (split {self.split!r})"

    def identity(self) -> dict[str, Any]:
        return {"hub": self.name, "split": self.split}

    def load(self, max_rows: int | None) -> pa.Table:
        dataset = self._load_dataset()
        check_columns(list(dataset.column_names), self.describe())
        rows = len(dataset) if max_rows is None else min(max_rows, len(dataset))
        table = dataset.with_format("arrow")[0:rows].select(list(COLUMNS))
        return normalize_table(table, self.describe())

    def _load_dataset(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise DataSourceError(
                f"data.path={self.name!r} is not a local path, so it would be loaded from the "
                "hub, which needs the 'datasets' package: pip install datasets (or "
                "alignkit[hub]); or pass a local folder of parquet files as data.path"
            ) from None
        try:
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


def resolve_source(path: str | None, split: str) -> LocalParquet | HubDataset | StyleFolder:
    """The source that ``data.path`` names, checked for existence but not read.

    A folder with ``original/`` and ``styled/`` image folders is read as style pairs
    (``alignkit.data.style_folder``); any other folder as parquet files.
    """
    if not path:
        raise DataSourceError(
            "data.path is not set; pass a folder of parquet files, one .parquet file or a hub "
            "dataset id, e.g. data.path=/data/my_pairs or data.path=yuvalkirstain/pickapic_v2"
        )
    local = Path(path).expanduser()
    from alignkit.data.style_folder import StyleFolder, is_style_folder

    if local.is_dir() and is_style_folder(local):
        return StyleFolder.open(local)
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
        return HubDataset(path, split)
    raise DataSourceError(
        f"data.path={path!r} is neither an existing file or folder nor a hub dataset id "
        "(owner/name); pass an existing folder of parquet files, a .parquet file, or an id "
        "such as yuvalkirstain/pickapic_v2"
    )
