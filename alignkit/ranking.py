"""Rank the methods of a sweep on one reward, and say which differences are real.

Every run's ``eval.json`` keeps, for each comparison (prompt, evaluation seed), the base and
the aligned score of every reward. Two methods evaluated on the same prompts and seeds are
compared pairwise: per comparison, the difference of their aligned scores (each averaged
over the method's training seeds), and of their wins over the base; the mean difference gets
a bootstrap interval that resamples prompts. Each method also gets its mean over training
seeds with a Student-t interval, and its training cost. Nothing assumes a particular reward:
the primary one is the first reward the evaluation was configured with, or the one asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from alignkit.stats import Interval, cluster_bootstrap_mean, t_interval

#: One comparison: a prompt and an evaluation seed.
Key = tuple[str, int]


@dataclass
class MethodRuns:
    """A group of runs (one method, several training seeds): their eval.json and summary.json."""

    name: str
    evaluations: list[dict] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class PooledScores:
    """Per comparison, a method's aligned score and win over the base, averaged over its runs."""

    score: dict[Key, float]
    win: dict[Key, float]


@dataclass(frozen=True)
class PairDifference:
    """Method ``first`` minus method ``second`` over the comparisons both were evaluated on."""

    first: str
    second: str
    comparisons: int
    prompts: int
    score: Interval
    win_rate: Interval


def win_outcome(aligned: float, base: float) -> float:
    """1 if the aligned sample scores higher than the base, 1/2 on a tie, else 0."""
    return 1.0 if aligned > base else 0.5 if aligned == base else 0.0


def rewards_scored(evaluations: list[dict | None]) -> list[str]:
    """Every reward some evaluation scored, in the order they were configured."""
    names = (name for e in evaluations if e for name in e.get("rewards") or {})
    return list(dict.fromkeys(names))


def primary_reward(evaluations: list[dict | None], requested: str | None = None) -> str:
    """``requested``, or else the first reward of the first evaluated run.

    A reward given with its checkpoint (``pickscore@/models/PickScore_v1``) may be asked for
    by its name alone.
    """
    available = rewards_scored(evaluations)
    if not available:
        raise ValueError(
            "no run has an evaluation (eval.json) to rank: run with eval.enabled=true, or "
            "evaluate saved runs with `python -m alignkit.evaluation <run folder>`"
        )
    if requested is None or requested in available:
        return requested or available[0]
    by_name = [spec for spec in available if spec.partition("@")[0] == requested]
    if len(by_name) == 1:
        return by_name[0]
    raise ValueError(
        f"--primary {requested}: no run's eval.json scores it (or several match); "
        f"scored: {', '.join(available)}"
    )


def has_comparisons(evaluation: dict | None, reward: str) -> bool:
    """Whether this eval.json keeps per-comparison scores of ``reward`` (older ones do not)."""
    if not evaluation or "comparisons" not in evaluation:
        return False
    return "scores" in (evaluation.get("rewards") or {}).get(reward, {})


def pool_runs(evaluations: list[dict], reward: str) -> PooledScores | None:
    """Average each comparison over the runs that scored it; None if none did."""
    scores: dict[Key, list[float]] = {}
    wins: dict[Key, list[float]] = {}
    for evaluation in evaluations:
        if not has_comparisons(evaluation, reward):
            continue
        comparisons = evaluation["comparisons"]
        entry = evaluation["rewards"][reward]["scores"]
        rows = zip(comparisons["prompt"], comparisons["seed"], entry["base"], entry["aligned"])
        for prompt, seed, base, aligned in rows:
            scores.setdefault((prompt, seed), []).append(aligned)
            wins.setdefault((prompt, seed), []).append(win_outcome(aligned, base))
    if not scores:
        return None
    return PooledScores(
        {key: sum(v) / len(v) for key, v in scores.items()},
        {key: sum(v) / len(v) for key, v in wins.items()},
    )


def compare_pair(
    first: str,
    a: PooledScores,
    second: str,
    b: PooledScores,
    resamples: int = 2000,
    seed: int = 0,
) -> PairDifference | None:
    """Paired differences ``a - b`` with bootstrap intervals; None if they share no comparison.

    Prompts are resampled as clusters; with a single prompt, its comparisons are.
    """
    keys = sorted(set(a.score) & set(b.score))
    if not keys:
        return None
    prompts = [prompt for prompt, _ in keys]
    clusters: list = prompts if len(set(prompts)) > 1 else keys
    score = [a.score[k] - b.score[k] for k in keys]
    win = [a.win[k] - b.win[k] for k in keys]
    return PairDifference(
        first,
        second,
        len(keys),
        len(set(prompts)),
        cluster_bootstrap_mean(score, clusters, resamples, seed),
        cluster_bootstrap_mean(win, clusters, resamples, seed),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _over_runs(values: list[float], percent: bool) -> str:
    """Mean over training seeds, with its Student-t interval when there are several (a rate's
    clipped to 0%-100%)."""
    shown = "{:.1%}" if percent else "{:.4g}"
    if len(values) < 2:
        return shown.format(values[0])
    interval = t_interval(values)
    low, high = interval.low, interval.high
    if percent:
        low, high = max(0.0, low), min(1.0, high)
    bounds = f"{shown.format(low)}–{shown.format(high)}"
    return f"{shown.format(interval.estimate)} ({bounds})"


def _signed(interval: Interval, percent: bool) -> str:
    shown = "{:+.1%}" if percent else "{:+.4g}"
    star = " *" if interval.excludes_zero else ""
    low, high = shown.format(interval.low), shown.format(interval.high)
    return f"{shown.format(interval.estimate)} ({low}, {high}){star}"


def method_table(methods: list[MethodRuns], reward: str) -> str:
    """One row per method scored by ``reward``, best mean first."""
    rows = []
    for method in methods:
        entries = [e["rewards"][reward] for e in method.evaluations if reward in e["rewards"]]
        if entries:
            rows.append((method, entries))
    rows.sort(key=lambda row: -_mean([e["aligned"] for e in row[1]]))
    lines = [
        f"| rank | method | runs | {reward} aligned (95% CI over runs) | win rate vs base "
        "(95% CI over runs) | comparisons per run | train s | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, (method, entries) in enumerate(rows, start=1):
        seconds = [s["train_seconds"] for s in method.summaries]
        memory = [s["peak_memory_mb"] for s in method.summaries]
        cost = [f"{_mean(v):.4g}" if v else "–" for v in (seconds, memory)]
        lines.append(
            f"| {rank} | {method.name} | {len(entries)} | "
            f"{_over_runs([e['aligned'] for e in entries], percent=False)} | "
            f"{_over_runs([e['win_rate']['rate'] for e in entries], percent=True)} | "
            f"{entries[0]['win_rate']['n']} | {cost[0]} | {cost[1]} |"
        )
    return "\n".join(lines)


def pairwise_differences(
    methods: list[MethodRuns], reward: str, resamples: int = 2000, seed: int = 0
) -> tuple[list[PairDifference], list[str]]:
    """Every pair of methods with per-comparison scores, the higher mean first; and the
    methods left out because none of their runs kept per-comparison scores of ``reward``."""
    pooled = {m.name: pool_runs(m.evaluations, reward) for m in methods}
    left_out = [name for name, scores in pooled.items() if scores is None]
    kept = sorted(
        ((name, s) for name, s in pooled.items() if s is not None),
        key=lambda item: -_mean(list(item[1].score.values())),
    )
    pairs = []
    for (first, a), (second, b) in combinations(kept, 2):
        difference = compare_pair(first, a, second, b, resamples, seed)
        if difference is not None:
            pairs.append(difference)
    return pairs, left_out


def pairwise_table(pairs: list[PairDifference], reward: str) -> str:
    lines = [
        f"| A | B | comparisons (prompts) | {reward}: A − B (95% CI) | "
        "win rate vs base: A − B (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for pair in pairs:
        lines.append(
            f"| {pair.first} | {pair.second} | {pair.comparisons} ({pair.prompts}) | "
            f"{_signed(pair.score, percent=False)} | {_signed(pair.win_rate, percent=True)} |"
        )
    return "\n".join(lines)


def ranking_section(
    methods: list[MethodRuns], requested: str | None = None, resamples: int = 2000, seed: int = 0
) -> str:
    """The Markdown the report shows above its full table."""
    reward = primary_reward([e for m in methods for e in m.evaluations], requested)
    pairs, left_out = pairwise_differences(methods, reward, resamples, seed)
    parts = [
        f"## Methods ranked by {reward}",
        method_table(methods, reward),
        "Means over each method's runs (training seeds); the interval is Student's t over "
        "the runs' means (none for a single run). Training cost from summary.json.",
        f"## Pairwise differences in {reward}",
    ]
    if pairs:
        parts += [
            pairwise_table(pairs, reward),
            f"Paired by prompt and evaluation seed, each side averaged over its runs; 95% "
            f"bootstrap intervals ({resamples} resamples of whole prompts, seed {seed}). "
            "`*`: the interval excludes 0. Not corrected for the number of pairs compared.",
        ]
    else:
        parts.append("No two methods share per-comparison scores to pair.")
    unscored = [m.name for m in methods if reward not in rewards_scored(m.evaluations)]
    if unscored:
        parts.append(f"Not evaluated with {reward}: {', '.join(unscored)}.")
    older = [name for name in left_out if name not in unscored]
    if older:
        parts.append(
            f"Not paired (their eval.json has no per-comparison {reward} scores: evaluate "
            f"again with `python -m alignkit.evaluation <run folder>`): {', '.join(older)}."
        )
    return "\n\n".join(parts)
