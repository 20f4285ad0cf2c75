"""Sweep folders that a requeued job finds again, and the SLURM launcher preset."""

import importlib.util

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from alignkit.config import config_group_options, register_configs


def _compose_with_hydra(*overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="alignkit.conf", version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_a_named_sweep_has_a_fixed_folder_and_the_default_follows_the_clock():
    named = _compose_with_hydra("sweep_name=ablation_1")
    assert named.hydra.sweep.dir == "multirun/ablation_1"
    clock = _compose_with_hydra().hydra.sweep.dir
    assert clock.startswith("multirun/20") and clock.count("/") == 2  # multirun/<date>/<time>


def test_hydra_settings_are_not_a_user_config_group():
    assert "hydra" not in config_group_options()


def _submitit_plugin_installed() -> bool:
    if importlib.util.find_spec("hydra_plugins") is None:
        return False
    return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


@pytest.mark.skipif(
    not _submitit_plugin_installed(),
    reason="hydra-submitit-launcher not installed (pip install -e '.[slurm]')",
)
def test_the_slurm_launcher_requeues_and_resumes_into_the_named_sweep():
    cfg = _compose_with_hydra("hydra/launcher=slurm", "sweep_name=dpo_seeds")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.additional_parameters.requeue is True
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s == 120
    assert launcher.submitit_folder == "multirun/dpo_seeds/.submitit/%j"
    assert "SIGUSR1" in cfg.trainer.preempt_signals  # what submitit's signal_delay_s sends
