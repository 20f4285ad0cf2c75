"""Compare the runs of a sweep: a Markdown table, curves and an HTML page with the grids.

    python -m alignkit.report <multirun folder> [--out DIR]

    python -m alignkit.report <multirun folder> --primary pickscore

Runs are grouped by the command-line overrides that differ between them, the seed aside (so
``-m algo=dpo,sft seed=0,1,2 trainer.lr=1e-4`` gives two groups of three, algo=dpo and
algo=sft); each group shows the mean and standard deviation over its seeds of the final
training metrics, every evaluation reward and win rate, training time and peak memory.
Above that table the groups are ranked on one reward (the first evaluated, or ``--primary``),
with paired differences between every two groups and their bootstrap intervals
(``alignkit.ranking``). Nothing here knows an algorithm by name: a new one appears by itself.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignkit.environment import environment_key, read_starts
from alignkit.ranking import MethodRuns, ranking_section

CURVE_METRICS = ("loss", "implicit_acc", "reward")


@dataclass
class RunRecord:
    folder: Path
    group: str
    metrics: list[dict] = field(default_factory=list)
    evaluation: dict | None = None
    summary: dict | None = None
    environment: dict | None = None  # its last start's (alignkit.environment)


def _overrides(folder: Path) -> list[str]:
    """The run's command-line overrides, without the seed and the output folder."""
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    return [o for o in overrides or [] if not o.startswith(("seed=", "output_dir="))]


def _group_name(overrides: list[str], shared: set[str], folder: Path) -> str:
    """The overrides that tell this run's group apart (those all runs share say nothing)."""
    kept = [o for o in overrides if o not in shared]
    if kept:
        return " ".join(sorted(kept))
    config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    return f"algo={config['algo']['name']}"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def find_runs(root: Path) -> list[RunRecord]:
    """Every run folder under ``root`` (a folder holding ``.hydra/config.yaml``)."""
    folders = [config.parent.parent for config in sorted(root.rglob(".hydra/config.yaml"))]
    overrides = {folder: _overrides(folder) for folder in folders}
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(folders) > 1 else set()
    runs = []
    for folder in folders:
        metrics_file = folder / "metrics.jsonl"
        metrics = (
            [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
            if metrics_file.is_file()
            else []
        )
        runs.append(
            RunRecord(
                folder,
                _group_name(overrides[folder], shared, folder),
                metrics,
                _read_json(folder / "eval.json"),
                _read_json(folder / "summary.json"),
                next(reversed(read_starts(folder)), None),
            )
        )
    return runs


def environment_section(runs: list[RunRecord]) -> str:
    """The environments the runs last ran in, each with its runs' count: numbers from two
    environments can differ at the rounding level, and sampled evaluations amplify that."""
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[environment_key(run.environment) if run.environment else "not recorded"] += 1
    lines = [f"- {key}: {count} run{'s' * (count != 1)}" for key, count in counts.items()]
    note = (
        "\n\nThe runs ran in more than one environment: compare their numbers with that in mind."
        if len(counts) > 1
        else ""
    )
    return "## Environment\n\n" + "\n".join(lines) + note


def final_values(run: RunRecord) -> dict[str, float]:
    """The numbers one run contributes to the table."""
    values: dict[str, float] = {}
    if run.metrics:
        tail = run.metrics[-max(1, len(run.metrics) // 10) :]
        for key in ("loss", "implicit_acc"):
            if key in tail[-1]:
                values[f"final {key}"] = statistics.fmean(m[key] for m in tail if key in m)
    for name, entry in ((run.evaluation or {}).get("rewards") or {}).items():
        values[f"{name} base"] = entry["base"]
        values[f"{name} aligned"] = entry["aligned"]
        values[f"{name} win rate"] = entry["win_rate"]["rate"]
    if run.summary:
        values["train s"] = run.summary["train_seconds"]
        values["peak MB"] = run.summary["peak_memory_mb"]
    return values


def methods_of(runs: list[RunRecord]) -> list[MethodRuns]:
    """The runs' evaluations and summaries, gathered by group."""
    methods: dict[str, MethodRuns] = {}
    for run in runs:
        method = methods.setdefault(run.group, MethodRuns(run.group))
        if run.evaluation:
            method.evaluations.append(run.evaluation)
        if run.summary:
            method.summaries.append(run.summary)
    return list(methods.values())


def summarise(runs: list[RunRecord]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """group -> column -> (mean, std, number of runs)."""
    collected: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for column, value in final_values(run).items():
            collected[run.group][column].append(value)
    return {
        group: {
            column: (
                statistics.fmean(values),
                statistics.stdev(values) if len(values) > 1 else 0.0,
                len(values),
            )
            for column, values in columns.items()
        }
        for group, columns in collected.items()
    }


def _cell(mean: float, std: float, runs: int) -> str:
    """``mean ± std``; a single run has no spread to show."""
    return f"{mean:.4g} ± {std:.2g}" if runs > 1 else f"{mean:.4g}"


def markdown_table(summary: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    columns = sorted({column for values in summary.values() for column in values})
    lines = [
        "| runs | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for group, values in sorted(summary.items()):
        runs = max(n for _, _, n in values.values())
        cells = [_cell(*values[c]) if c in values else "–" for c in columns]
        lines.append(f"| {group} (n={runs}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: list[RunRecord], out_dir: Path) -> list[Path]:
    """One PNG per logged metric: the mean over each group's seeds against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    keys = sorted(
        {k for run in runs for m in run.metrics for k in m if k.startswith(CURVE_METRICS)}
    )
    for key in keys:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        by_group: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in runs:
            for row in run.metrics:
                if key in row:
                    by_group[run.group][row["step"]].append(row[key])
        for group, by_step in sorted(by_group.items()):
            steps = sorted(by_step)
            axis.plot(steps, [statistics.fmean(by_step[s]) for s in steps], label=group)
        axis.set_xlabel("step")
        axis.set_ylabel(key)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / f"curve_{key}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _html_table(table_md: str) -> str:
    rows = [line.strip("|").split("|") for line in table_md.splitlines() if line.strip()]
    header, body = rows[0], rows[2:]
    table = "<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in header)
    table += "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>"
        for row in body
    )
    return table + "</table>"


def _html_blocks(markdown: str) -> str:
    """The report's own Markdown (headings, tables, paragraphs) as HTML."""
    blocks = []
    for block in markdown.split("\n\n"):
        if block.startswith("## "):
            blocks.append(f"<h2>{html.escape(block[3:])}</h2>")
        elif block.startswith("|"):
            blocks.append(_html_table(block))
        else:
            blocks.append(f"<p>{html.escape(block)}</p>")
    return "".join(blocks)


def html_page(body_md: str, curves: list[Path], grids: list[tuple[str, Path]]) -> str:
    images = "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in curves)
    grid_html = "".join(
        f"<figure><img src='{path.name}'><figcaption>{html.escape(label)}</figcaption></figure>"
        for label, path in grids
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{display:inline-block;margin:8px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>alignkit report</title>"
        f"<style>{style}</style></head><body><h1>alignkit report</h1>{_html_blocks(body_md)}"
        f"<h2>Curves</h2>{images}<h2>Base vs aligned (same seeds)</h2>{grid_html}</body></html>"
    )


def write_report(
    root: Path, out_dir: Path | None = None, primary: str | None = None, resamples: int = 2000
) -> Path:
    """Write ``report.md``, ``report.html`` and the PNGs; return the output folder.

    ``primary`` is the reward the methods are ranked on (default: the first one evaluated).
    """
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no run folders (with .hydra/config.yaml) under {root}")
    evaluated = any(run.evaluation for run in runs)
    ranking = ranking_section(methods_of(runs), primary, resamples) if evaluated or primary else ""
    out_dir = out_dir or root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summarise(runs))
    body = "\n\n".join(filter(None, [ranking, "## All runs", table, environment_section(runs)]))
    curves = plot_curves(runs, out_dir)
    grids = []
    for index, run in enumerate(runs):
        grid = run.folder / "eval_grid.png"
        if grid.is_file():
            target = out_dir / f"grid_{index:03d}.png"
            shutil.copyfile(grid, target)
            grids.append((f"{run.group} — {run.folder.name}", target))
    (out_dir / "report.md").write_text(
        f"# alignkit report: {root}\n\n{body}\n\n"
        + "".join(f"![{p.stem}]({p.name})\n" for p in curves)
    )
    (out_dir / "report.html").write_text(html_page(body, curves, grids))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a multirun folder (or any folder of runs)")
    parser.add_argument("--out", type=Path, default=None, help="default: <root>/report")
    parser.add_argument(
        "--primary", default=None, help="the reward to rank on (default: the first evaluated)"
    )
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)"
    )
    args = parser.parse_args(argv)
    try:
        out_dir = write_report(args.root, args.out, args.primary, args.resamples)
    except (ValueError, FileNotFoundError) as error:
        print(f"alignkit: error: {error}", file=sys.stderr)
        sys.exit(2)
    print((out_dir / "report.md").read_text())
    print(f"HTML: {out_dir / 'report.html'}")


if __name__ == "__main__":
    main()
