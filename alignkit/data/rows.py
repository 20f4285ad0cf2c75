"""Source rows read on demand, so a dataset far larger than memory can be trained on.

A parquet source is indexed by its files' footers alone (row -> file, row group, offset);
labels are read column-only, and captions and image bytes one row group at a time, with a
few recent row groups kept for the neighbours that a cache build reads next. A hub dataset
is already a memory-mapped Arrow table, so its rows are taken from the mapping; streamed
from the hub, it is read front to back, which is all a cache build needs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alignkit.data.schema import (
    COLUMNS,
    EXPECTED_SCHEMA,
    LABEL_COLUMNS,
    DataSourceError,
    SchemaError,
    check_columns,
    normalize_labels,
    normalize_table,
)

#: Decoded row groups kept in memory: the current one and a few before it, never a file.
ROW_GROUPS_KEPT = 4
#: Streamed rows kept after reading, so a row asked for again does not restart the stream.
RECENT_STREAMED_ROWS = 64
_ROW_COLUMNS = ("caption", "jpg_0", "jpg_1")


@dataclass(frozen=True)
class SourceRow:
    caption: str
    jpg_0: bytes | None
    jpg_1: bytes | None


class RowReader(Protocol):
    """Rows ``0..num_rows-1`` of a source: all labels at once, other columns by row id."""

    @property
    def num_rows(self) -> int: ...

    def labels(self) -> tuple[np.ndarray, np.ndarray]: ...

    def read(self, row_ids: Sequence[int]) -> list[SourceRow]: ...


def _rows_of(table: pa.Table, offsets: Sequence[int]) -> list[SourceRow]:
    picked = table.take(pa.array(offsets, type=pa.int64()))
    columns = [picked.column(name).to_pylist() for name in _ROW_COLUMNS]
    return [SourceRow(*values) for values in zip(*columns)]


@dataclass(frozen=True)
class RowGroup:
    file: Path
    group: int
    first_row: int  # row id of the group's first row
    rows: int  # rows used (fewer than stored when max_rows cuts the group)


def _cannot_read(file: Path, err: Exception) -> DataSourceError:
    return DataSourceError(f"cannot read parquet file {file}: {err}. Re-download or remove it")


class ParquetRows:
    """Parquet files in order, addressed by global row id; see the module doc."""

    def __init__(self, files: Sequence[Path], max_rows: int | None) -> None:
        groups: list[RowGroup] = []
        total = 0
        for file in files:
            if max_rows is not None and total >= max_rows:
                break
            for group, stored in enumerate(self._group_sizes(file)):
                rows = stored if max_rows is None else min(stored, max_rows - total)
                if rows > 0:
                    groups.append(RowGroup(file, group, total, rows))
                    total += rows
        self.groups = groups
        self._first_rows = np.array([group.first_row for group in groups], dtype=np.int64)
        self._num_rows = total
        self._kept: OrderedDict[int, pa.Table] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _group_sizes(file: Path) -> list[int]:
        """Rows per row group, from the footer; the schema is checked without reading rows."""
        try:
            reader = pq.ParquetFile(file)
            check_columns(reader.schema_arrow.names, str(file))
            empty = pa.schema([reader.schema_arrow.field(name) for name in COLUMNS]).empty_table()
            sizes = [reader.metadata.row_group(g).num_rows for g in range(reader.num_row_groups)]
        except (OSError, pa.ArrowException) as err:
            raise _cannot_read(file, err) from None
        normalize_table(empty, str(file))
        return sizes

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def _read_group(self, group: RowGroup, columns: Sequence[str]) -> pa.Table:
        try:
            table = pq.ParquetFile(group.file).read_row_group(group.group, columns=list(columns))
        except (OSError, pa.ArrowException) as err:
            raise _cannot_read(group.file, err) from None
        return table.slice(0, group.rows)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Both label columns as float64 arrays, read without touching the image columns."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in LABEL_COLUMNS}
        for group in self.groups:
            table = self._read_group(group, LABEL_COLUMNS)
            for name in LABEL_COLUMNS:
                column = normalize_labels(table.column(name), name, str(group.file))
                parts[name].append(column.to_numpy())
        label_0, label_1 = (
            np.concatenate(parts[name]) if parts[name] else np.zeros(0) for name in LABEL_COLUMNS
        )
        return label_0, label_1

    def _group_table(self, index: int) -> pa.Table:
        with self._lock:
            if index in self._kept:
                self._kept.move_to_end(index)
                return self._kept[index]
            group = self.groups[index]
            table = normalize_table(self._read_group(group, COLUMNS), str(group.file))
            self._kept[index] = table
            if len(self._kept) > ROW_GROUPS_KEPT:
                self._kept.popitem(last=False)
            return table

    def read(self, row_ids: Sequence[int]) -> list[SourceRow]:
        """Caption and image bytes of ``row_ids``, each row group read once per call."""
        found: dict[int, SourceRow] = {}
        groups = np.searchsorted(self._first_rows, np.asarray(row_ids), side="right") - 1
        by_group: dict[int, list[int]] = {}
        for row, group in zip(row_ids, groups.tolist()):
            by_group.setdefault(group, []).append(row)
        for group, rows in by_group.items():
            first = self.groups[group].first_row
            found.update(zip(rows, _rows_of(self._group_table(group), [r - first for r in rows])))
        return [found[row] for row in row_ids]


class ArrowRows:
    """A memory-mapped Arrow table (a hub dataset): rows are taken, never copied in bulk."""

    def __init__(self, table: pa.Table, where: str) -> None:
        check_columns(table.column_names, where)
        normalize_table(table.slice(0, 0).select(list(COLUMNS)), where)
        self.table = table
        self.where = where

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        label_0, label_1 = (
            normalize_labels(self.table.column(name), name, self.where).to_numpy()
            for name in LABEL_COLUMNS
        )
        return label_0, label_1

    def read(self, row_ids: Sequence[int]) -> list[SourceRow]:
        picked = self.table.take(pa.array(row_ids, type=pa.int64())).select(list(COLUMNS))
        return _rows_of(normalize_table(picked, self.where), range(len(row_ids)))


def _stream_label(value: object, name: str, where: str) -> float:
    try:
        return float("nan") if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SchemaError(
            f"column {name!r} of {where} holds {value!r}, not a number; {EXPECTED_SCHEMA}"
        ) from None


def _stream_image(value: object, name: str, where: str) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None or isinstance(value, bytes):
        return value
    raise SchemaError(
        f"column {name!r} of {where} holds {type(value).__name__}, not image bytes; "
        f"{EXPECTED_SCHEMA}"
    )


class StreamedRows:
    """A dataset read as a stream of records, front to back (a hub id, ``data.streaming``).

    Nothing is downloaded up front: the labels take one pass over the label columns, and rows
    are read in increasing order, as the cache build asks for them; asking for a row before
    the last ``RECENT_STREAMED_ROWS`` starts the stream again.
    """

    def __init__(
        self,
        open_stream: Callable[[Sequence[str] | None], Iterator[dict]],
        max_rows: int | None,
        where: str,
    ) -> None:
        self._open_stream = open_stream
        self.max_rows = max_rows
        self.where = where
        self._labels: tuple[np.ndarray, np.ndarray] | None = None
        self._cursor: tuple[int, Iterator[dict]] | None = None
        self._recent: OrderedDict[int, SourceRow] = OrderedDict()
        self._lock = threading.Lock()

    def _records(self, columns: Sequence[str] | None) -> Iterator[dict]:
        return islice(self._open_stream(columns), self.max_rows)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        if self._labels is None:
            values: list[list[float]] = [[], []]
            for record in self._records(LABEL_COLUMNS):
                for column, name in zip(values, LABEL_COLUMNS):
                    column.append(_stream_label(record[name], name, self.where))
            self._labels = (np.array(values[0], dtype=float), np.array(values[1], dtype=float))
        return self._labels

    @property
    def num_rows(self) -> int:
        return len(self.labels()[0])

    def _seek(self, row_id: int) -> SourceRow:
        if row_id in self._recent:
            return self._recent[row_id]
        if self._cursor is None or self._cursor[0] > row_id:
            self._cursor = (0, self._records(None))
        position, records = self._cursor
        for record in records:
            position += 1
            if position - 1 == row_id:
                self._cursor = (position, records)
                check_columns(list(record), self.where)
                caption = record["caption"]
                if caption is not None and not isinstance(caption, str):
                    raise SchemaError(
                        f"column 'caption' of {self.where} holds {type(caption).__name__}, "
                        f"not text; {EXPECTED_SCHEMA}"
                    )
                images = (_stream_image(record[n], n, self.where) for n in ("jpg_0", "jpg_1"))
                row = SourceRow(caption or "", *images)
                self._recent[row_id] = row
                if len(self._recent) > RECENT_STREAMED_ROWS:
                    self._recent.popitem(last=False)
                return row
        raise IndexError(f"row {row_id} is past the end of {self.where} ({position} rows)")

    def read(self, row_ids: Sequence[int]) -> list[SourceRow]:
        with self._lock:
            found = {row_id: self._seek(row_id) for row_id in sorted(set(row_ids))}
        return [found[row_id] for row_id in row_ids]
