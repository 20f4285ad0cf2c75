"""The environment a run records (versions, hardware, threads) and the report's summary of it."""

import json
from importlib import metadata

import torch

from alignkit.environment import describe_environment, read_starts, record_environment
from alignkit.report import environment_section, find_runs
from tests.test_report import _fake_run, _winning


def test_the_description_names_this_process_versions_hardware_and_threads():
    described = describe_environment("cpu")
    assert described["libraries"]["torch"] == metadata.version("torch")
    assert described["libraries"]["diffusers"] == metadata.version("diffusers")
    assert described["torch_threads"] == torch.get_num_threads()
    assert described["cpu"] and described["device"] == "cpu" and "gpu" not in described
    json.dumps(described)  # plain JSON values only


def test_each_start_is_appended_and_a_damaged_file_starts_a_new_list(tmp_path):
    record_environment(tmp_path, "cpu")
    record_environment(tmp_path, "cpu")
    assert len(read_starts(tmp_path)) == 2
    (tmp_path / "environment.json").write_text('{"starts": [')  # cut short
    assert read_starts(tmp_path) == []
    record_environment(tmp_path, "cpu")
    assert len(read_starts(tmp_path)) == 1
    assert not (tmp_path / "environment.json.partial").exists()


def test_the_report_lists_each_environment_and_warns_when_runs_differ(tmp_path):
    for seed in (0, 1, 2):
        _fake_run(tmp_path / f"algo=dpo,seed={seed}", "dpo", seed, _winning(12))
    record_environment(tmp_path / "algo=dpo,seed=0", "cpu")
    record_environment(tmp_path / "algo=dpo,seed=1", "cpu")
    same = environment_section(find_runs(tmp_path))
    assert "2 runs" in same and "not recorded: 1 run" in same and "more than one" in same

    record_environment(tmp_path / "algo=dpo,seed=2", "cpu")
    same = environment_section(find_runs(tmp_path))
    assert f"torch {metadata.version('torch')}" in same and "3 runs" in same
    assert "more than one" not in same

    changed = tmp_path / "algo=dpo,seed=2" / "environment.json"
    starts = json.loads(changed.read_text())["starts"]
    starts.append({**starts[-1], "torch_threads": starts[-1]["torch_threads"] + 7})
    changed.write_text(json.dumps({"starts": starts}))
    different = environment_section(find_runs(tmp_path))
    assert "2 runs" in different and "1 run" in different and "more than one" in different
