"""The ablation report over a sweep folder: grouping, mean ± std, curves, HTML."""

import json
import statistics

import pytest
import yaml
from PIL import Image

from alignkit.report import find_runs, main, summarise


def _fake_run(folder, algo, seed, losses, win, seconds):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"algo": {"name": algo}}))
    overrides = [f"algo={algo}", f"seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    reward = {"base": 0.5, "aligned": 0.5 + win / 10, "win_rate": {"rate": win}}
    (folder / "eval.json").write_text(json.dumps({"rewards": {"oracle": reward}}))
    summary = {"train_seconds": seconds, "peak_memory_mb": 100.0}
    (folder / "summary.json").write_text(json.dumps(summary))
    Image.new("RGB", (8, 8), "red").save(folder / "eval_grid.png")


def _sweep(root):
    _fake_run(root / "algo=dpo,seed=0", "dpo", 0, [0.7, 0.6], 0.6, 10.0)
    _fake_run(root / "algo=dpo,seed=1", "dpo", 1, [0.7, 0.4], 0.7, 12.0)
    _fake_run(root / "algo=sft,seed=0", "sft", 0, [0.2, 0.1], 0.55, 8.0)


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
    assert "report.html" in capsys.readouterr().out


def test_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folders"):
        main([str(tmp_path)])
