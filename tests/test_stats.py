"""Intervals for comparing methods, against hand-computed and textbook references."""

import math

import numpy as np
import pytest

from alignkit.stats import (
    Interval,
    cluster_bootstrap_mean,
    student_t_cdf,
    student_t_quantile,
    t_interval,
)


def test_two_equal_clusters_span_their_two_means():
    # Resampling 2 clusters gives means 0, 0.5, 1 with chances 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% quantiles are the clusters' own means. Treated as 20 independent values instead,
    # the interval is the binomial one, about 0.5 +- 1.96 * 0.5 / sqrt(20) = 0.5 +- 0.22.
    values = [0.0] * 10 + [1.0] * 10
    by_prompt = cluster_bootstrap_mean(values, ["a"] * 10 + ["b"] * 10)
    assert by_prompt == Interval(0.5, 0.0, 1.0)
    by_comparison = cluster_bootstrap_mean(values, list(range(20)))
    assert 0.22 < by_comparison.low < 0.34 and 0.66 < by_comparison.high < 0.78


def test_clusters_weigh_by_their_size():
    # Cluster a holds one 1, cluster b three 0s: the mean is 1/4; resamples give a,a -> 1,
    # b,b -> 0 and a,b -> 1/4, so the interval runs from 0 to 1.
    result = cluster_bootstrap_mean([1.0, 0.0, 0.0, 0.0], ["a", "b", "b", "b"])
    assert result == Interval(0.25, 0.0, 1.0)


def test_constant_differences_have_no_spread():
    result = cluster_bootstrap_mean([0.3] * 6, [0, 0, 1, 1, 2, 2])
    assert result.estimate == pytest.approx(0.3)
    assert result.low == pytest.approx(0.3) and result.high == pytest.approx(0.3)
    assert result.excludes_zero


def test_independent_values_match_the_normal_interval():
    values = np.random.default_rng(7).normal(0.3, 1.0, size=400)
    result = cluster_bootstrap_mean(values.tolist(), list(range(400)), resamples=4000)
    half_width = 1.96 * values.std() / math.sqrt(400)
    assert result.estimate == pytest.approx(values.mean())
    assert (result.high - result.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (result.high + result.low) / 2 == pytest.approx(values.mean(), abs=0.02)


def test_the_seed_fixes_the_resamples():
    values = np.random.default_rng(0).normal(size=60).tolist()
    clusters = [i // 2 for i in range(60)]
    first = cluster_bootstrap_mean(values, clusters, seed=3)
    assert cluster_bootstrap_mean(values, clusters, seed=3) == first
    assert cluster_bootstrap_mean(values, clusters, seed=4) != first


@pytest.mark.parametrize(
    "values, clusters, message",
    [
        ([1.0, 2.0], [0], "2 values but 1 cluster"),
        ([], [], "no values"),
    ],
)
def test_bad_bootstrap_input_is_named(values, clusters, message):
    with pytest.raises(ValueError, match=message):
        cluster_bootstrap_mean(values, clusters)


def test_a_level_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="level 95"):
        cluster_bootstrap_mean([1.0], [0], level=95)


@pytest.mark.parametrize(
    "dof, quantile",
    # two-sided 95% critical values, from any table of Student's t
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (30, 2.042)],
)
def test_t_quantiles_match_the_table(dof, quantile):
    assert student_t_quantile(0.975, dof) == pytest.approx(quantile, abs=5e-4)
    assert student_t_quantile(0.025, dof) == pytest.approx(-quantile, abs=5e-4)


def test_t_cdf_closed_forms():
    assert student_t_cdf(0.0, 5) == 0.5
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert student_t_cdf(1.0, 2) == pytest.approx(0.5 + 0.5 / math.sqrt(3))  # x/(2 sqrt(2+x^2))
    assert student_t_cdf(-2.0, 7) == pytest.approx(1 - student_t_cdf(2.0, 7))


def test_t_interval_over_three_runs():
    # mean 2, sample std 1: half width t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.484
    result = t_interval([1.0, 2.0, 3.0])
    assert result.estimate == 2.0
    assert result.low == pytest.approx(2 - 2.4843, abs=1e-3)
    assert result.high == pytest.approx(2 + 2.4843, abs=1e-3)
    assert not result.excludes_zero


def test_one_run_has_no_interval():
    with pytest.raises(ValueError, match="at least two"):
        t_interval([0.5])
