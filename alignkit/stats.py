"""Confidence intervals for comparing methods: pure functions on plain numbers.

Two questions need two intervals. Is method A better than method B on the same prompts and
seeds? A bootstrap over the paired per-comparison differences, resampling whole prompts
(clusters), because the samples of one prompt share its difficulty. How much does a method's
result move from one training seed to the next? A Student-t interval over the runs' means,
since three or so training seeds are too few to bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

#: Cap on resamples x clusters held in memory at once (the bootstrap runs in chunks).
_CHUNK_CELLS = 1_000_000


@dataclass(frozen=True)
class Interval:
    """An estimate with the bounds of its confidence interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """The difference is significant at the interval's level."""
        return self.low > 0 or self.high < 0


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} must lie strictly between 0 and 1 (e.g. 0.95)")


def cluster_bootstrap_mean(
    values: Sequence[float],
    clusters: Sequence[Hashable],
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval that resamples whole clusters.

    Each resample draws as many clusters as there are, with replacement, and takes the mean
    of all their values, so clusters of different sizes weigh by their size, as in the mean.
    Giving every value its own cluster is the ordinary bootstrap.
    """
    _check_level(level)
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    if not values:
        raise ValueError("no values to bootstrap")
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: need at least 1 (2000 is usual)")
    labels = {label: index for index, label in enumerate(dict.fromkeys(clusters))}
    label_index = np.array([labels[c] for c in clusters])
    data = np.asarray(values, dtype=np.float64)
    sums = np.bincount(label_index, weights=data, minlength=len(labels))
    sizes = np.bincount(label_index, minlength=len(labels)).astype(np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // len(labels))
    means = []
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, len(labels), size=(min(chunk, resamples - start), len(labels)))
        means.append(sums[draws].sum(axis=1) / sizes[draws].sum(axis=1))
    tail = (1 - level) / 2
    low, high = np.quantile(np.concatenate(means), [tail, 1 - tail])
    return Interval(float(data.mean()), float(low), float(high))


def student_t_cdf(x: float, dof: int) -> float:
    """P(T <= x) for Student's t with a whole number of degrees of freedom.

    The closed form in the angle theta = atan(x / sqrt(dof)) (Abramowitz and Stegun 26.7.3,
    26.7.4): a finite sum of powers of cos(theta), exact for every integer ``dof``.
    """
    if dof < 1:
        raise ValueError(f"dof={dof}: Student's t needs at least 1 degree of freedom")
    theta = math.atan(abs(x) / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2 == 1:
        term, total = 1.0, 0.0
        if dof > 1:
            total = term = math.cos(theta)
            for k in range(2, dof - 1, 2):
                term *= cos2 * k / (k + 1)
                total += term
        central = 2 / math.pi * (theta + math.sin(theta) * total)
    else:
        term = total = 1.0
        for k in range(2, dof - 1, 2):
            term *= cos2 * (k - 1) / k
            total += term
        central = math.sin(theta) * total
    return 0.5 + math.copysign(central / 2, x)


def student_t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t, by bisection on ``student_t_cdf``."""
    if not 0 < probability < 1:
        raise ValueError(f"probability {probability} must lie strictly between 0 and 1")
    low, high = -1.0, 1.0
    while student_t_cdf(low, dof) > probability:
        low *= 2
    while student_t_cdf(high, dof) < probability:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if student_t_cdf(middle, dof) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, abs(middle)):
            break
    return (low + high) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of a few runs' results with its Student-t interval (runs differ by their seed)."""
    _check_level(level)
    if len(values) < 2:
        raise ValueError(f"{len(values)} value(s): an interval over runs needs at least two")
    mean = float(np.mean(values))
    spread = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    half_width = student_t_quantile(1 - (1 - level) / 2, len(values) - 1) * spread
    return Interval(mean, mean - half_width, mean + half_width)
