"""The Pick-a-Pic schema every preference source is read in, and its one clear error.

Text, image bytes (binary, or a hub ``Image`` feature's ``{'bytes': ...}``) and float64
labels: whatever kinds a source stores, rows leave the data layer in these.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

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


def normalize_labels(column: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
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
        **{name: normalize_labels(table.column(name), name, where) for name in LABEL_COLUMNS},
    }
    return pa.table(columns)
