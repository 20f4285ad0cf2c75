"""Pairing two methods' comparisons and ranking methods, against hand-computed numbers."""

import pytest

from alignkit.ranking import (
    MethodRuns,
    compare_pair,
    method_table,
    pool_runs,
    primary_reward,
    ranking_section,
    win_outcome,
)
from alignkit.stats import Interval

PROMPTS = ["p0", "p0", "p1", "p1"]
SEEDS = [0, 1, 0, 1]


def _evaluation(base, aligned, reward="score", prompts=PROMPTS, seeds=SEEDS):
    wins = [win_outcome(a, b) for a, b in zip(aligned, base)]
    entry = {
        "base": sum(base) / len(base),
        "aligned": sum(aligned) / len(aligned),
        "win_rate": {"rate": sum(wins) / len(wins), "n": len(wins)},
        "scores": {"base": base, "aligned": aligned},
    }
    return {"comparisons": {"prompt": prompts, "seed": seeds}, "rewards": {reward: entry}}


BASE = [0.5, 0.5, 0.5, 0.5]
A_RUNS = [_evaluation(BASE, [0.7, 0.5, 0.4, 0.6]), _evaluation(BASE, [0.4, 0.5, 0.6, 0.6])]
B_RUNS = [_evaluation(BASE, [0.5, 0.4, 0.5, 0.5])]


def test_a_methods_runs_pool_per_comparison():
    pooled = pool_runs(A_RUNS, "score")
    assert pooled.score == pytest.approx(
        {("p0", 0): 0.55, ("p0", 1): 0.5, ("p1", 0): 0.5, ("p1", 1): 0.6}
    )
    # wins over the base: run 0 gives 1, 1/2, 0, 1; run 1 gives 0, 1/2, 1, 1
    assert pooled.win == {("p0", 0): 0.5, ("p0", 1): 0.5, ("p1", 0): 0.5, ("p1", 1): 1.0}


def test_paired_differences_resample_prompts():
    a, b = pool_runs(A_RUNS, "score"), pool_runs(B_RUNS, "score")
    pair = compare_pair("a", a, "b", b)
    # score differences 0.05, 0.1 (p0) and 0.0, 0.1 (p1): mean 0.0625; prompt means 0.075 and
    # 0.05, so resampled means are 0.05, 0.0625 or 0.075 and the interval is [0.05, 0.075]
    assert (pair.comparisons, pair.prompts) == (4, 2)
    assert pair.score.estimate == pytest.approx(0.0625)
    assert pair.score.low == pytest.approx(0.05) and pair.score.high == pytest.approx(0.075)
    assert pair.score.excludes_zero
    # win differences (vs base wins 1/2, 0, 1/2, 1/2): 0, 1/2, 0, 1/2; both prompts 1/4
    assert pair.win_rate == Interval(0.25, 0.25, 0.25)


def test_only_shared_comparisons_pair():
    other = _evaluation([0.5, 0.5], [0.9, 0.1], prompts=["p1", "p2"], seeds=[1, 1])
    pair = compare_pair("a", pool_runs(A_RUNS, "score"), "c", pool_runs([other], "score"))
    # only (p1, 1) is shared: a 0.6 vs c 0.9; one prompt, so its one comparison is resampled
    assert pair.comparisons == 1
    assert pair.score == Interval(pytest.approx(-0.3), pytest.approx(-0.3), pytest.approx(-0.3))
    disjoint = pool_runs([_evaluation([0.5], [0.9], prompts=["p9"], seeds=[0])], "score")
    assert compare_pair("a", pool_runs(A_RUNS, "score"), "d", disjoint) is None


def test_runs_without_comparisons_do_not_pool():
    old_format = {"rewards": {"score": {"base": 0.5, "aligned": 0.6, "win_rate": {"rate": 0.7}}}}
    assert pool_runs([old_format], "score") is None
    assert pool_runs(A_RUNS, "other reward") is None


def test_the_primary_reward_is_the_first_configured_unless_asked():
    runs = [{"rewards": {"pickscore": {}, "hpsv2": {}}}, {"rewards": {"aesthetic": {}}}]
    assert primary_reward(runs) == "pickscore"
    assert primary_reward(runs, "aesthetic") == "aesthetic"
    with pytest.raises(ValueError, match="--primary oracle: .*scored: pickscore, hpsv2, aesthetic"):
        primary_reward(runs, "oracle")
    with_paths = [{"rewards": {"hpsv2@/m/hps.pt": {}, "pickscore@/m/a": {}, "pickscore@/m/b": {}}}]
    assert primary_reward(with_paths, "hpsv2") == "hpsv2@/m/hps.pt"
    with pytest.raises(ValueError, match="several match"):
        primary_reward(with_paths, "pickscore")
    with pytest.raises(ValueError, match="no run has an evaluation"):
        primary_reward([None])


def test_the_method_table_ranks_by_mean_with_an_interval_over_runs():
    methods = [
        MethodRuns("b", B_RUNS, [{"train_seconds": 5.0, "peak_memory_mb": 100.0}]),
        MethodRuns("a", A_RUNS, [{"train_seconds": 10.0, "peak_memory_mb": 200.0}] * 2),
    ]
    rows = method_table(methods, "score").splitlines()
    # a's runs: means 0.55 and 0.525, so 0.5375 +- t(0.975, 1) * 0.0125 = 0.5375 +- 0.1588;
    # win rates 0.625 and 0.625 (no spread). b: one run, 0.475 and 37.5%, no interval
    assert rows[2] == "| 1 | a | 2 | 0.5375 (0.3787–0.6963) | 62.5% (62.5%–62.5%) | 4 | 10 | 200 |"
    assert rows[3] == "| 2 | b | 1 | 0.475 | 37.5% | 4 | 5 | 100 |"


def test_the_section_names_methods_left_out_and_why():
    old_format = {
        "rewards": {"score": {"base": 0.5, "aligned": 0.6, "win_rate": {"rate": 1, "n": 4}}}
    }
    methods = [
        MethodRuns("a", A_RUNS),
        MethodRuns("b", B_RUNS),
        MethodRuns("old", [old_format]),
        MethodRuns("other reward", [_evaluation(BASE, BASE, reward="clip")]),
    ]
    section = ranking_section(methods, "score")
    assert "| a | b | 4 (2) |" in section
    assert "Not evaluated with score: other reward." in section
    assert section.endswith("evaluation <run folder>`): old.")
