"""Two processes over gloo on the CPU, launched as on a GPU box (``accelerate launch``):
DPO and SPO runs finish, and a run stopped by SIGTERM resumes to the uninterrupted weights,
with the reference pass in every step and with the reference errors computed ahead.

``accelerate launch --cpu`` starts one process only (accelerate runs several CPU processes
through mpirun); ``--multi_gpu`` with ``trainer.cpu=true`` starts them with torchrun and
joins them over gloo, which needs no GPU.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from alignkit.checkpoint import list_checkpoints
from tests.helpers import write_pair_folder

pytestmark = pytest.mark.multiprocess

MAX_STEPS = 8


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(*overrides: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        f"--main_process_port={_free_port()}",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "-m",
        "alignkit",
        "trainer.cpu=true",
        "trainer.progress_bar=false",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )


def _finish(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return stderr


def _steps(run_dir) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _assert_both_ranks_saved(checkpoint) -> None:
    assert json.loads((checkpoint / "state.json").read_text())["num_processes"] == 2
    for rank in (0, 1):
        assert (checkpoint / f"rank_{rank}.safetensors").is_file()
    first, second = (load_file(checkpoint / f"rank_{r}.safetensors") for r in (0, 1))
    assert not torch.equal(first["alignkit_generator"], second["alignkit_generator"])


@pytest.mark.parametrize("reference", ["live", "precomputed"])
def test_two_process_dpo_stopped_by_sigterm_resumes_to_the_uninterrupted_weights(
    tmp_path, reference
):
    pairs = write_pair_folder(tmp_path / "pairs")
    dpo = [
        "model=tiny_sd",
        f"algo.reference={reference}",
        "data=pairs",
        f"data.path={pairs}",
        "trainer.batch_size=2",
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.checkpoint_every=100",
    ]
    reference = _launch(*dpo, f"output_dir={tmp_path / 'a'}")
    interrupted = _launch(*dpo, f"output_dir={tmp_path / 'b'}")
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert interrupted.poll() is None and time.monotonic() < deadline, "no step logged"
        time.sleep(0.02)
    os.killpg(interrupted.pid, signal.SIGTERM)  # as a scheduler signals every process of a job
    _, stderr = interrupted.communicate(timeout=600)
    assert interrupted.returncode != 0
    assert "alignkit: stopped by SIGTERM after step" in stderr
    (saved,) = list_checkpoints(tmp_path / "b" / "checkpoints")
    assert 1 <= int(saved.name.split("_")[1]) < MAX_STEPS
    _assert_both_ranks_saved(saved)

    _finish(_launch(*dpo, f"output_dir={tmp_path / 'b'}"))
    _finish(reference)
    assert _steps(tmp_path / "b") == list(range(1, MAX_STEPS + 1))
    weights = "final/pytorch_lora_weights.safetensors"
    expected, got = load_file(tmp_path / "a" / weights), load_file(tmp_path / "b" / weights)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    if reference == "precomputed":  # each rank computed the micro-batches it trains on
        indices = sorted(
            index
            for chunk in (tmp_path / "b" / "reference_errors").glob("*.safetensors")
            for index in load_file(chunk)["indices"].tolist()
        )
        assert indices == list(range(2 * MAX_STEPS))


def test_two_process_spo_run_finishes_in_one_run_folder_with_each_ranks_state(tmp_path):
    _finish(
        _launch(
            "model=tiny_sd",
            "data=tiny_prompts",
            "algo=spo",
            "algo.spm_base=tiny_random",
            "algo.steps=4",
            "algo.divert_start_step=1",
            "algo.k=2",
            "algo.threshold=0",
            "algo.train_batch_size=2",
            "trainer.batch_size=2",
            "trainer.max_steps=2",
            "eval.enabled=false",
            # named by the clock down to the microsecond: each process resolves its own name
            f"output_dir={tmp_path}/spo_${{now:%H-%M-%S-%f}}",
        )
    )
    (run_dir,) = [folder for folder in tmp_path.iterdir() if (folder / "metrics.jsonl").exists()]
    assert _steps(run_dir) == [1, 2]
    (last,) = list_checkpoints(run_dir / "checkpoints")
    _assert_both_ranks_saved(last)
    assert (run_dir / "final" / "pytorch_lora_weights.safetensors").is_file()
