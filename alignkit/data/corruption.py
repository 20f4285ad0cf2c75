"""Bookkeeping of rows whose images cannot be decoded: skip a few, stop when there are many.

Scraped preference data always holds some broken images; dropping them silently would hide
a broken download, so the count is reported and a threshold turns it into an error.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

#: How many row ids an error or warning lists before it summarises the rest.
SHOWN_ROW_IDS = 10


class CorruptDataError(ValueError):
    """More rows than ``data.max_corrupt_fraction`` allows have undecodable images."""


def preview_row_ids(row_ids: list[int]) -> str:
    """``[3, 7, 9]``, or the first ``SHOWN_ROW_IDS`` ids and how many more there are."""
    shown = ", ".join(str(row) for row in row_ids[:SHOWN_ROW_IDS])
    hidden = len(row_ids) - SHOWN_ROW_IDS
    return f"[{shown}]" if hidden <= 0 else f"[{shown}, ... and {hidden} more]"


class CorruptRowLog:
    """Which rows decoded and which did not, with the first failure's reason."""

    def __init__(self, max_fraction: float, where: str) -> None:
        self.max_fraction = max_fraction
        self.where = where
        self.decoded: set[int] = set()
        self.corrupt: dict[int, str] = {}

    @property
    def seen(self) -> int:
        return len(self.decoded) + len(self.corrupt)

    @property
    def fraction(self) -> float:
        return len(self.corrupt) / self.seen if self.seen else 0.0

    def record_decoded(self, row_id: int) -> None:
        self.decoded.add(row_id)

    def record_corrupt(self, row_id: int, reason: str) -> None:
        self.corrupt[row_id] = reason

    def is_corrupt(self, row_id: int) -> bool:
        return row_id in self.corrupt

    def raise_if_too_many(self, min_seen: int = 0) -> None:
        """Raise ``CorruptDataError`` once ``min_seen`` rows were seen and too many are corrupt."""
        if self.seen < max(min_seen, 1) or self.fraction <= self.max_fraction:
            return
        tolerated = math.ceil(self.fraction * 100) / 100
        first_row, first_reason = next(iter(self.corrupt.items()))
        raise CorruptDataError(
            f"{len(self.corrupt)} of {self.seen} pairs in {self.where} have undecodable images "
            f"({self.fraction:.1%}), above data.max_corrupt_fraction={self.max_fraction} "
            f"({self.max_fraction:.1%}). Corrupt row ids: {self.corrupt_preview()} (row "
            f"{first_row}: {first_reason}). Repair or remove those rows, or tolerate them with "
            f"data.max_corrupt_fraction={tolerated}"
        )

    def corrupt_preview(self) -> str:
        return preview_row_ids(sorted(self.corrupt))

    def warn_summary(self) -> None:
        """One warning with the count and ids of the skipped rows (nothing when there are none)."""
        if self.corrupt:
            log.warning(
                "skipped %d of %d pairs in %s with undecodable images (%.1f%%): row ids %s",
                len(self.corrupt),
                self.seen,
                self.where,
                100 * self.fraction,
                self.corrupt_preview(),
            )
