"""``python -m alignkit`` end to end on tiny random models: the run folder of the contract."""

import json
import subprocess
import sys

from safetensors.torch import load_file

from alignkit.app import run
from tests.helpers import compose_config, write_pair_folder


def _alignkit(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignkit", *overrides], capture_output=True, text=True
    )


def test_dpo_on_tiny_sd_writes_the_run_folder_and_resumes(tmp_path):
    pairs = write_pair_folder(tmp_path / "pairs")
    run_dir = tmp_path / "run"
    command = [
        "model=tiny_sd",
        "data=pairs",
        f"data.path={pairs}",
        "trainer.max_steps=3",
        "trainer.batch_size=2",
        "trainer.checkpoint_every=2",
        "trainer.progress_bar=false",
        f"output_dir={run_dir}",
    ]
    first = _alignkit(*command)
    assert first.returncode == 0, first.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    [start] = json.loads((run_dir / "environment.json").read_text())["starts"]
    assert start["libraries"]["torch"] and start["device"] == "cpu"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert {"loss", "lr", "samples_per_s", "implicit_acc", "model_mse_w"} <= set(rows[0])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_00000002",
        "step_00000003",
    ]
    lora = load_file(run_dir / "final" / "pytorch_lora_weights.safetensors")
    assert lora and all(key.startswith("unet.") for key in lora)
    assert not (run_dir / "eval.json").exists()  # evaluation is on for the tiny world only

    longer = _alignkit(*command[:-2], "trainer.max_steps=4", command[-1])
    assert longer.returncode == 0, longer.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # resumed at 3, not restarted
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == 3
    assert len(json.loads((run_dir / "environment.json").read_text())["starts"]) == 2


def test_sft_on_tiny_sdxl_runs_in_process(tmp_path):
    pairs = write_pair_folder(tmp_path / "pairs")
    cfg = compose_config(
        "model=tiny_sdxl",
        "algo=sft",
        "data=pairs",
        f"data.path={pairs}",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
        "trainer.progress_bar=false",
        f"output_dir={tmp_path / 'run'}",
    )
    result = run(cfg)
    assert result.train.step == 2
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert "model_mse_w" in json.loads(metrics[-1])


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path):
    unknown_algo = _alignkit("algo=dpoo")
    assert unknown_algo.returncode != 0
    assert "dpo" in unknown_algo.stderr and "sft" in unknown_algo.stderr
    missing_folder = _alignkit(
        "model=tiny_sd", "data=pairs", f"data.path={tmp_path / 'nowhere'}", f"output_dir={tmp_path}"
    )
    assert missing_folder.returncode == 2
    assert missing_folder.stderr.strip().startswith("alignkit: error: data.path=")
    assert "nowhere" in missing_folder.stderr and "Traceback" not in missing_folder.stderr
