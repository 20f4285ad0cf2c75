"""The tiny world: an offline, CPU-sized text-to-image world where alignment is measurable.

A prompt grammar (``grammar``), a procedural renderer (``render``), an analytic judge that
stands in for human raters (``judge``, differentiable twin in ``judge_torch``) and judged
preference pairs in the Pick-a-Pic schema (``pairs``).
"""

from alignkit.tinyworld.grammar import (
    PromptSpec,
    all_prompts,
    heldout_prompts,
    parse_prompt,
    train_prompts,
)
from alignkit.tinyworld.judge import fidelity_ok, judge_breakdown, judge_scores
from alignkit.tinyworld.judge_torch import judge_breakdown_torch, judge_scores_torch
from alignkit.tinyworld.render import Variation, draw, render

__all__ = [
    "PromptSpec",
    "Variation",
    "all_prompts",
    "draw",
    "fidelity_ok",
    "heldout_prompts",
    "judge_breakdown",
    "judge_breakdown_torch",
    "judge_scores",
    "judge_scores_torch",
    "label_pair",
    "pairs_from_images",
    "parse_prompt",
    "render",
    "render_pairs",
    "train_prompts",
    "write_parquet_folder",
]

_PAIRS = ("label_pair", "pairs_from_images", "render_pairs", "write_parquet_folder")


def __getattr__(name: str) -> object:
    """``pairs`` loads on first use, so ``python -m alignkit.tinyworld.pairs`` runs it fresh."""
    if name in _PAIRS:
        from alignkit.tinyworld import pairs

        return getattr(pairs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
