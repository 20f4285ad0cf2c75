"""Pair semantics: which image won, and which rows are no preference at all.

Diffusion-DPO needs every pair ordered winner first. Pick-a-Pic marks the winner with its
label, so rows where ``label_1 > label_0`` are read swapped; ties (equal labels, 0.5/0.5)
carry no preference and are dropped by default, as the official code does.
"""

from __future__ import annotations

import logging

import numpy as np

from alignkit.data.corruption import preview_row_ids
from alignkit.data.rows import RowReader
from alignkit.data.schema import SchemaError

log = logging.getLogger(__name__)

#: Pick-a-Pic's labels: 1 for the preferred image, 0 for the other, 0.5 on both for a tie
VALID_LABELS = (0.0, 0.5, 1.0)


class PreferencePairs:
    """The kept rows of a source, each readable as (caption, winner, loser).

    Positions ``0..num_pairs-1`` index the kept rows; ``row_ids[k]`` is the row's index in
    the source, the id that messages and caches use. Only the labels are read up front; a
    row's caption and images are read when asked for.
    """

    def __init__(self, rows: RowReader, drop_ties: bool, where: str) -> None:
        label_0, label_1 = rows.labels()
        unlabelled = np.flatnonzero(np.isnan(label_0) | np.isnan(label_1))
        if unlabelled.size:
            raise SchemaError(
                f"{unlabelled.size} row(s) of {where} have no label_0/label_1 (row ids "
                f"{preview_row_ids(unlabelled.tolist())}); give every row its labels "
                "(1/0 for a preference, 0.5/0.5 for a tie) or remove those rows"
            )
        _check_label_values(label_0, label_1, where)
        ties = label_0 == label_1
        keep = ~ties if drop_ties else np.ones_like(ties)
        self.rows = rows
        self.source_rows = rows.num_rows
        self.ties_dropped = int(ties.sum()) if drop_ties else 0
        self.row_ids: list[int] = np.flatnonzero(keep).tolist()
        self._swapped = (label_1 > label_0)[keep]
        if not self.row_ids:
            raise ValueError(
                f"{where} has no preference pairs: {self.source_rows} rows, "
                f"{self.ties_dropped} of them ties that were dropped; add data, raise "
                "data.max_rows, or keep ties with data.drop_ties=false"
            )
        if drop_ties:
            log.info(
                "dropped %d of %d rows of %s as ties (data.drop_ties=true)",
                self.ties_dropped,
                self.source_rows,
                where,
            )
        else:
            log.info("kept %d tie rows of %s (data.drop_ties=false)", int(ties.sum()), where)

    @property
    def num_pairs(self) -> int:
        return len(self.row_ids)

    def caption(self, position: int) -> str:
        return self.rows.read([self.row_ids[position]])[0].caption

    def image_bytes(self, position: int) -> tuple[bytes | None, bytes | None]:
        """The encoded (winner, loser) images; ``None`` where the row has no image."""
        row = self.rows.read([self.row_ids[position]])[0]
        return (row.jpg_1, row.jpg_0) if self._swapped[position] else (row.jpg_0, row.jpg_1)


def _check_label_values(label_0: np.ndarray, label_1: np.ndarray, where: str) -> None:
    """Refuse labels other than 0, 0.5 and 1: a 0-100 score or a vote count would otherwise
    be read as a preference without complaint."""
    bad = np.flatnonzero(~np.isin(label_0, VALID_LABELS) | ~np.isin(label_1, VALID_LABELS))
    if bad.size:
        first = int(bad[0])
        raise SchemaError(
            f"{bad.size} row(s) of {where} have label_0/label_1 outside {{0, 0.5, 1}} (row ids "
            f"{preview_row_ids(bad.tolist())}; row {first} has label_0={label_0[first]:g}, "
            f"label_1={label_1[first]:g}); label the preferred image 1 and the other 0, "
            "or both 0.5 for a tie"
        )
