"""Run-folder safety and bad input on the command line: one ``alignkit: error:`` line, exit
status 2, and nothing written where a run was refused."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignkit.app import check_resolution
from alignkit.hydra_callbacks import blocking_file
from tests.helpers import pair_rows, write_pair_folder


def _alignkit_all(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side (each pays Python's start-up) and wait for all."""
    started = [
        (
            command,
            subprocess.Popen(
                [sys.executable, "-m", "alignkit", *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for command in commands
    ]
    done = []
    for command, process in started:
        stdout, stderr = process.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return done


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alignkit: error: "), result.stderr
    return lines[0]


def test_refused_resume_leaves_the_run_folder_byte_for_byte_untouched(tmp_path):
    pairs = write_pair_folder(tmp_path / "pairs")
    run_dir = tmp_path / "run"
    command = [
        "model=tiny_sd",
        "data=pairs",
        f"data.path={pairs}",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
        "trainer.checkpoint_every=1",
        "trainer.progress_bar=false",
        f"output_dir={run_dir}",
    ]
    (first,) = _alignkit_all(command)
    assert first.returncode == 0, first.stderr
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert overrides == command
    recorded = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert recorded["trainer"]["max_steps"] == 2 and recorded["output_dir"] == str(run_dir)
    assert recorded["trainer"]["mixed_precision"] == "no"  # null resolved: accelerate set none
    assert (run_dir / ".hydra" / "hydra.yaml").is_file()
    before = _snapshot(run_dir)

    (refused,) = _alignkit_all([*command, "trainer.lr=0.5", "trainer.max_steps=3"])
    line = _one_error_line(refused)
    assert "trainer.lr: 0.0004 -> 0.5" in line and "output_dir=" in line
    assert _snapshot(run_dir) == before


def test_bad_paths_labels_and_resolutions_are_one_clear_line(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    bad_labels = tmp_path / "bad_labels"
    bad_labels.mkdir()
    frame = pair_rows(6)
    frame.loc[3, "label_0"] = 7.0  # a score, not a preference label
    frame.to_parquet(bad_labels / "rows.parquet")
    pairs = write_pair_folder(tmp_path / "pairs")
    tiny = ["model=tiny_sd", "data=pairs", "trainer.progress_bar=false"]
    file_as_run, labels, resolution = _alignkit_all(
        [*tiny, f"data.path={pairs}", f"output_dir={a_file}"],
        [*tiny, f"data.path={bad_labels}", f"output_dir={tmp_path / 'run_labels'}"],
        [*tiny, f"data.path={pairs}", "model.resolution=63", f"output_dir={tmp_path / 'r'}"],
    )
    line = _one_error_line(file_as_run)
    assert f"output_dir={a_file} is a file" in line and "pass a folder path" in line
    assert a_file.read_text() == "keep me"

    line = _one_error_line(labels)
    assert "outside {0, 0.5, 1}" in line and "row ids [3]" in line and "label_0=7" in line
    assert "label the preferred image 1" in line

    line = _one_error_line(resolution)
    assert "model.resolution=63 is not a multiple of 8" in line and "use 56 or 64" in line


def test_a_file_anywhere_on_the_run_folder_path_is_found(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    assert blocking_file(a_file) == a_file
    assert blocking_file(a_file / "runs" / "one") == a_file  # mkdir would fail under it
    assert blocking_file(tmp_path / "new" / "run") is None
    assert blocking_file(tmp_path) is None


@pytest.mark.parametrize(
    ("resolution", "advice"), [(63, "use 56 or 64"), (1030, "use 1024 or 1032"), (4, "use 8")]
)
def test_resolutions_off_the_vae_grid_name_the_nearest_valid_ones(resolution, advice):
    with pytest.raises(ValueError, match=f"model.resolution={resolution} .*; {advice}$"):
        check_resolution(resolution)
    check_resolution(resolution - resolution % 8 or 8)  # a multiple of 8 passes
