"""experiments/gpu_check.py: its --tiny mode runs the full grid's code on the CPU, and its
step timer counts a script's optimizer steps without changing the script."""

import json
import sys
import textwrap

import pytest
import torch
from accelerate.state import AcceleratorState

from experiments import gpu_check


@pytest.fixture
def fresh_accelerate_state():
    """The check trains in bf16; accelerate keeps one precision per process, which earlier
    tests in the same pytest process have fixed to "no"."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_tiny_mode_measures_every_variant_and_writes_the_json(tmp_path, fresh_accelerate_state):
    out = tmp_path / "check.json"
    gpu_check.main(["--tiny", "--models", "sdxl", "--steps", "3", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["device"] == "cpu"
    grid = {(r["algo"], r["gradient_checkpointing"]) for r in report["results"]}
    assert grid == {("dpo", False), ("dpo", True), ("spo", False), ("spo", True)}
    for row in report["results"]:
        assert row["model"] == "sdxl" and "error" not in row
        assert row["step_s_median"] > 0 and row["peak_memory_mb"] > 0
        if row["algo"] == "dpo":
            assert row["timed_steps"] == 3 and row["round_steps"] == 0
        else:
            # a round of 2 prompts x 3 pooled steps makes 6 pairs, 2 per step: the 4 steps
            # are round, train, train, round; the first is not timed
            assert (row["timed_steps"], row["round_steps"]) == (2, 1)
            assert row["round_step_s_median"] > 0
    assert report["diffusers_sdxl_dpo"] == {"skipped": "no --diffusers checkout given"}


def test_a_diffusers_path_without_the_example_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_diffusion_dpo_sdxl.py"):
        gpu_check.main(["--tiny", "--out", str(tmp_path / "x.json"), "--diffusers", "/nowhere"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_the_full_size_check_without_a_gpu_says_so(tmp_path):
    with pytest.raises(ValueError, match="needs a GPU; --tiny"):
        gpu_check.main(["--out", str(tmp_path / "x.json")])


def test_the_step_timer_records_each_optimizer_step_of_an_unchanged_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time, torch
            weight = torch.nn.Parameter(torch.zeros(2))
            optimizer = torch.optim.SGD([weight], lr=0.1)
            for _ in range(int(sys.argv[1])):
                time.sleep(0.05)
                weight.sum().backward()
                optimizer.step()
            """
        )
    )
    out = tmp_path / "timing.json"
    saved_argv = sys.argv
    try:
        gpu_check.main(["--timed-script", str(out), "--", str(script), "5"])
    finally:
        sys.argv = saved_argv
    timing = json.loads(out.read_text())
    assert timing["timed_steps"] == 4  # the gaps between 5 step ends
    assert 0.05 <= timing["step_s_median"] < 1.0
