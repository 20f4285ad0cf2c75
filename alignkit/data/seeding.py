"""Random generators derived from a seed and a purpose, so every draw is reproducible alone.

Resumability needs each random choice (an epoch's order, a row's crop, a batch's caption
dropout) to depend only on its own coordinates, never on how many draws came before it.
"""

from __future__ import annotations

import hashlib

import torch


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a stable function of ``parts`` (unlike ``hash``, across runs too)."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def derived_generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded by ``derived_seed(*parts)``."""
    return torch.Generator().manual_seed(derived_seed(*parts))
