"""Preemption: a watched signal stops the run after its step, with a checkpoint, and the same
command resumes it to the weights an uninterrupted run ends with."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from alignkit.checkpoint import list_checkpoints
from alignkit.preemption import Preempted, SignalWatch, parse_signals
from tests.helpers import write_pair_folder
from tests.model_helpers import tiny_backbone, tiny_trainer

MAX_STEPS = 12


def test_signal_names_are_parsed_and_bad_ones_named():
    assert parse_signals(["SIGTERM", "usr1"]) == [signal.SIGTERM, signal.SIGUSR1]
    with pytest.raises(ValueError, match="'SIGNOPE'.*SIGUSR1"):
        parse_signals(["SIGNOPE"])
    with pytest.raises(ValueError, match="'SIGKILL'"):
        parse_signals(["SIGKILL"])


def test_a_watched_signal_is_noted_and_the_old_handler_restored():
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: calls.append(number))
    try:
        with SignalWatch([signal.SIGUSR1]) as watch:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
        assert watch.received == signal.SIGUSR1 and calls == []
        Preempted("SIGUSR1", 3, 143, watch.previous_handler).hand_on()
        assert calls == [signal.SIGUSR1]  # handed on to the handler installed before
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert calls == [signal.SIGUSR1, signal.SIGUSR1]  # and that one is back in place
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_trainer_stops_after_the_step_in_flight_and_saves(tmp_path):
    trainer = tiny_trainer(tiny_backbone(), tmp_path, max_steps=5, checkpoint_every=100)
    real_step = trainer.train_step

    def step_then_signal():
        metrics = real_step()
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    trainer.train_step = step_then_signal
    with pytest.raises(Preempted, match="SIGTERM after step 2") as stopped:
        trainer.fit([])
    assert stopped.value.exit_code == 143
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    assert not (tmp_path / "final").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _command(pairs, run_dir):
    return [
        sys.executable,
        "-m",
        "alignkit",
        "model=tiny_sd",
        "data=pairs",
        f"data.path={pairs}",
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.batch_size=2",
        "trainer.checkpoint_every=100",
        "trainer.progress_bar=false",
        f"output_dir={run_dir}",
    ]


def _wait_for_metrics(path, process, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file() and path.read_text().strip():
            return
        time.sleep(0.02)
    raise AssertionError(f"no step logged to {path} (exit status {process.poll()})")


def test_sigterm_mid_run_then_the_same_command_matches_the_uninterrupted_run(tmp_path):
    pairs = write_pair_folder(tmp_path / "pairs")
    reference = subprocess.Popen(_command(pairs, tmp_path / "a"), stderr=subprocess.PIPE)
    interrupted = subprocess.Popen(
        _command(pairs, tmp_path / "b"), stderr=subprocess.PIPE, text=True
    )
    _wait_for_metrics(tmp_path / "b" / "metrics.jsonl", interrupted)
    interrupted.send_signal(signal.SIGTERM)
    _, stderr = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("alignkit: stopped by SIGTERM after step")
    saved = list_checkpoints(tmp_path / "b" / "checkpoints")
    assert len(saved) == 1 and 1 <= int(saved[0].name.split("_")[1]) < MAX_STEPS
    assert not (tmp_path / "b" / "final").exists()

    resumed = subprocess.run(_command(pairs, tmp_path / "b"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, MAX_STEPS + 1))
    weights = "final/pytorch_lora_weights.safetensors"
    expected, got = load_file(tmp_path / "a" / weights), load_file(tmp_path / "b" / weights)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
