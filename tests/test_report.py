"""The ablation report over a sweep folder: grouping, mean ± std, ranking with paired
bootstrap intervals, curves, HTML; on synthetic run folders with known differences."""

import json
import statistics

import numpy
import pytest
import yaml
from PIL import Image

from alignkit.ranking import win_outcome
from alignkit.report import find_runs, main, summarise

PROMPTS = [f"prompt {i}" for i in range(4)]
SEEDS_PER_PROMPT = 5


def _evaluation(scores: dict[str, tuple[list[float], list[float]]]) -> dict:
    """An eval.json as evaluation.evaluate writes it, from each reward's per-comparison scores."""
    rewards = {}
    for name, (base, aligned) in scores.items():
        wins = [win_outcome(a, b) for a, b in zip(aligned, base)]
        rewards[name] = {
            "base": statistics.fmean(base),
            "aligned": statistics.fmean(aligned),
            "win_rate": {"rate": statistics.fmean(wins), "n": len(wins)},
            "scores": {"base": list(base), "aligned": list(aligned)},
        }
    prompts = [p for p in PROMPTS for _ in range(SEEDS_PER_PROMPT)]
    seeds = [s for _ in PROMPTS for s in range(SEEDS_PER_PROMPT)]
    return {"comparisons": {"prompt": prompts, "seed": seeds}, "rewards": rewards}


def _fake_run(folder, algo, seed, evaluation, losses=(0.5,), seconds=1.0):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"algo": {"name": algo}}))
    overrides = [f"algo={algo}", f"seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if evaluation is not None:
        (folder / "eval.json").write_text(json.dumps(evaluation))
    summary = {"train_seconds": seconds, "peak_memory_mb": 100.0}
    (folder / "summary.json").write_text(json.dumps(summary))
    Image.new("RGB", (8, 8), "red").save(folder / "eval_grid.png")


def _winning(wins: int) -> dict:
    """The judge prefers the aligned sample in the first ``wins`` of the 20 comparisons."""
    aligned = [0.6 if i < wins else 0.4 for i in range(len(PROMPTS) * SEEDS_PER_PROMPT)]
    return _evaluation({"oracle": ([0.5] * len(aligned), aligned)})


def _sweep(root):
    _fake_run(root / "algo=dpo,seed=0", "dpo", 0, _winning(12), [0.7, 0.6], 10.0)
    _fake_run(root / "algo=dpo,seed=1", "dpo", 1, _winning(14), [0.7, 0.4], 12.0)
    _fake_run(root / "algo=sft,seed=0", "sft", 0, _winning(11), [0.2, 0.1], 8.0)


def test_runs_group_by_overrides_without_the_seed(tmp_path):
    _sweep(tmp_path)
    summary = summarise(find_runs(tmp_path))
    assert set(summary) == {"algo=dpo", "algo=sft"}
    mean, std, n = summary["algo=dpo"]["oracle win rate"]
    assert mean == pytest.approx(0.65) and n == 2
    assert std == statistics.stdev([0.6, 0.7])
    assert summary["algo=dpo"]["final loss"][0] == statistics.fmean([0.6, 0.4])
    assert summary["algo=sft"]["train s"] == (8.0, 0.0, 1)


def test_report_writes_markdown_html_curves_and_grids(tmp_path, capsys):
    _sweep(tmp_path)
    main([str(tmp_path)])
    out = tmp_path / "report"
    table = (out / "report.md").read_text()
    assert "| algo=dpo (n=2) |" in table and "0.65 ± 0.071" in table
    sft_row = next(line for line in table.splitlines() if line.startswith("| algo=sft (n=1) |"))
    assert "| 8 |" in sft_row and "±" not in sft_row
    assert (out / "curve_loss.png").is_file()
    assert len(list(out.glob("grid_*.png"))) == 3
    page = (out / "report.html").read_text()
    assert "algo=sft" in page and "curve_loss.png" in page
    assert "<h2>Methods ranked by oracle</h2>" in page
    assert "<td>algo=dpo</td><td>algo=sft</td><td>20 (4)</td>" in page
    assert "report.html" in capsys.readouterr().out


def test_an_empty_folder_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"alignkit: error: no run folders (with .hydra/config.yaml) under {tmp_path}\n"
    )


def _noisy_sweep(root, shifts: dict[str, float], reward="oracle", seeds=3):
    """Runs whose aligned scores are the base's plus ``shift`` plus uniform noise (+-0.02)."""
    rng = numpy.random.default_rng(0)
    count = len(PROMPTS) * SEEDS_PER_PROMPT
    base = rng.uniform(0.2, 0.4, size=count)
    aligned = {}
    for algo, shift in shifts.items():
        for seed in range(seeds):
            scores = base + shift + rng.uniform(-0.02, 0.02, size=count)
            aligned[algo, seed] = scores
            evaluation = _evaluation({reward: (base.tolist(), scores.tolist())})
            _fake_run(root / f"algo={algo},seed={seed}", algo, seed, evaluation)
    return aligned


def _row(table: str, start: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_real_difference_is_significant_and_a_null_one_is_not(tmp_path):
    aligned = _noisy_sweep(tmp_path, {"strong": 0.05, "weak": 0.0, "twin": 0.0})
    main([str(tmp_path)])
    table = (tmp_path / "report" / "report.md").read_text()
    strong_vs_weak = _row(table, "| algo=strong | algo=weak |")
    # the estimate: per comparison, strong's mean over its 3 runs minus weak's
    pooled = {a: numpy.mean([aligned[a, s] for s in range(3)], axis=0) for a in ("strong", "weak")}
    expected = (pooled["strong"] - pooled["weak"]).mean()
    assert strong_vs_weak[3].startswith(f"{expected:+.4g} (") and strong_vs_weak[3].endswith("*")
    # strong always beats the base (shift 0.05 > noise 0.02); weak about half the time
    assert strong_vs_weak[4].endswith("*") and strong_vs_weak[2] == "20 (4)"
    weak_first = "| algo=weak | algo=twin |" in table  # the higher mean comes first
    null = _row(table, "| algo=weak | algo=twin |" if weak_first else "| algo=twin | algo=weak |")
    assert not null[3].endswith("*") and not null[4].endswith("*")
    ranked = [_row(table, f"| {rank} |")[1] for rank in (1, 2)]
    assert ranked[0] == "algo=strong"
    means = [aligned["strong", s].mean() for s in range(3)]
    assert _row(table, "| 1 |")[3].startswith(f"{numpy.mean(means):.4g} (")


def test_a_reward_only_sweep_ranks_on_its_first_reward_or_the_one_asked(tmp_path, capsys):
    # a user's own sweep: PickScore and HPSv2 on their prompts, no judge in eval.json
    count = len(PROMPTS) * SEEDS_PER_PROMPT
    base = [20.0] * count
    for algo, pick, hps in (("dpo", 21.0, 0.20), ("spo", 20.5, 0.30)):
        evaluation = _evaluation(
            {"pickscore": (base, [pick] * count), "hpsv2": ([0.25] * count, [hps] * count)}
        )
        _fake_run(tmp_path / f"algo={algo}", algo, 0, evaluation)
    main([str(tmp_path)])
    table = (tmp_path / "report" / "report.md").read_text()
    assert "## Methods ranked by pickscore" in table and "oracle" not in table
    assert _row(table, "| 1 |")[1] == "algo=dpo"
    assert _row(table, "| algo=dpo | algo=spo |")[3] == "+0.5 (+0.5, +0.5) *"
    main([str(tmp_path), "--primary", "hpsv2"])
    table = (tmp_path / "report" / "report.md").read_text()
    assert _row(table, "| 1 |")[1] == "algo=spo"
    assert _row(table, "| algo=spo | algo=dpo |")[4] == "+100.0% (+100.0%, +100.0%) *"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--primary", "oracle"])
    assert capsys.readouterr().err == (
        "alignkit: error: --primary oracle: no run's eval.json scores it (or several match); "
        "scored: pickscore, hpsv2\n"
    )


def test_runs_without_per_comparison_scores_are_ranked_but_not_paired(tmp_path):
    _sweep(tmp_path)
    entry = {"base": 0.5, "aligned": 0.7, "win_rate": {"rate": 0.9, "n": 20}}
    _fake_run(tmp_path / "algo=rpo,seed=0", "rpo", 0, {"samples": 20, "rewards": {"oracle": entry}})
    main([str(tmp_path)])
    table = (tmp_path / "report" / "report.md").read_text()
    assert _row(table, "| 1 |")[1] == "algo=rpo"
    assert "per-comparison oracle scores" in table and "): algo=rpo." in table
    assert "| algo=rpo | algo" not in table and "| algo=dpo | algo=sft |" in table


def test_a_sweep_without_evaluation_still_reports(tmp_path):
    _fake_run(tmp_path / "algo=dpo", "dpo", 0, None, [0.7, 0.6])
    _fake_run(tmp_path / "algo=sft", "sft", 0, None, [0.2, 0.1])
    main([str(tmp_path)])
    table = (tmp_path / "report" / "report.md").read_text()
    assert "Methods ranked" not in table and "| algo=sft (n=1) | 0.1 |" in table
