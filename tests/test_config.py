import itertools
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from alignkit.algorithms import ALGORITHMS
from alignkit.config import (
    ConfigKeyError,
    config_group_options,
    register_configs,
    setting_differences,
    validate_config,
)
from tests.helpers import compose_config

register_configs()
GROUPS = config_group_options()


def test_groups_exist():
    assert {"model", "data", "algo", "reward", "logger", "experiment"} <= set(GROUPS)
    assert set(GROUPS["algo"]) == set(ALGORITHMS.names())


@pytest.mark.parametrize(
    ("algo", "model"), list(itertools.product(GROUPS["algo"], GROUPS["model"]))
)
def test_every_algo_composes_with_every_model(algo, model):
    cfg = compose_config(f"algo={algo}", f"model={model}", "data=pairs", "data.path=/tmp/x")
    assert cfg.algo.name == algo
    assert cfg.model.name == model
    assert cfg.model.family in {"sd", "sdxl"}
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("group", ["data", "logger", "reward", "experiment"])
def test_every_option_of_the_other_groups_composes(group):
    for option in GROUPS[group]:
        cfg = compose_config(f"{group}={option}", "data.path=/tmp/x")
        assert cfg.data.path


def test_misspelt_key_is_rejected_by_name():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("algo.bta=100")
    assert "bta" in str(error.value) + str(error.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        compose_config("model.lora.rnk=4")


def test_added_unknown_keys_are_rejected_by_validation():
    cfg = compose_config("+model.lora.rnk=4", "+algo.bta=3")
    with pytest.raises(ConfigKeyError, match=r"model\.lora\.rnk \(valid keys: alpha,.*rank"):
        validate_config(cfg)
    with pytest.raises(ConfigKeyError, match=r"algo\.bta"):
        validate_config(cfg)
    validate_config(compose_config())


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_config("trainer.max_steps=many")


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match=r"(?s)Available options in 'algo'.*dpo"):
        compose_config("algo=nonexistent")


def test_command_line_keys_of_the_contract_exist():
    cfg = compose_config(
        "trainer.max_steps=7", "trainer.batch_size=3", "trainer.lr=0.1", "seed=4", "output_dir=/o"
    )
    assert (cfg.trainer.max_steps, cfg.trainer.batch_size, cfg.trainer.lr) == (7, 3, 0.1)
    assert (cfg.seed, cfg.output_dir) == (4, "/o")


def test_help_lists_the_groups_and_their_options():
    result = subprocess.run(
        [sys.executable, "-m", "alignkit", "--help"], capture_output=True, text=True, check=True
    )
    for group, options in GROUPS.items():
        assert f"{group}: {', '.join(options)}" in result.stdout
    assert "schema" not in result.stdout.split("== This config ==")[0]


def test_tiny_presets_run_their_algorithm_on_the_tiny_world():
    presets = [o for o in GROUPS["experiment"] if o.startswith("tiny_") or o.endswith("_tiny")]
    assert len(presets) >= 8
    for preset in presets:
        cfg = compose_config(f"experiment={preset}")
        algo = preset.removeprefix("tiny_").removesuffix("_tiny")
        assert (cfg.model.name, cfg.algo.name) == ("tiny", algo)
        assert cfg.data.kind == ("prompts" if algo in {"spo", "drtune"} else "pairs")


def test_the_tiny_dpo_preset_is_the_default_job():
    preset = compose_config("experiment=tiny_dpo")
    default = compose_config("trainer.progress_bar=false")
    assert OmegaConf.to_container(preset) == OmegaConf.to_container(default)


def test_setting_differences_name_each_change_and_skip_the_ignored_keys():
    old = {"seed": 0, "eval.every": 10, "eval.prompts": "a", "evaluate": 1, "gone": 2}
    new = {"seed": 1, "eval.every": 20, "eval.prompts": "b", "evaluate": 3, "added": 4}
    assert setting_differences(old, new, ignore=("eval",)) == [
        "added: None -> 4",
        "evaluate: 1 -> 3",  # shares a prefix with "eval" but is not under it
        "gone: 2 -> None",
        "seed: 0 -> 1",
    ]
    assert setting_differences(old, dict(old)) == []
