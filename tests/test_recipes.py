"""`python -m alignkit algo=X model=Y` composes the published recipe for every real model.

The table below is the reference: each value with the place it was published. A recipe file
that drifts from it, or a tiny-world default that leaks into a real model, fails here.
"""

from __future__ import annotations

import itertools

import pytest
from omegaconf import OmegaConf

from alignkit.config import config_group_options
from tests.helpers import compose_config

REAL_MODELS = ("sd15", "sd21", "sdxl")
SPO_PROMPTS = "RockeyCoss/SPO/34d343b9ee8a2e52b1be46c2a487b903bcfbda50"
SPM_REPO = "SPO-Diffusion-Models/Step-Aware_Preference_Models"

# diffusers' Diffusion-DPO port (examples/research_projects/diffusion_dpo, README)
DPO_LORA_SD15 = {
    "data.name": "pickapic",
    "data.caption_dropout": 0.0,
    "data.random_crop": False,  # the official launchers centre-crop
    "model.finetune": "lora",
    "model.lora.rank": 8,
    "algo.beta": 5000,  # the port's 2500 without the 0.5
    "trainer.batch_size": 16,
    "trainer.grad_accum": 2,
    "trainer.lr": 1e-5,
    "trainer.max_steps": 10000,
    "trainer.mixed_precision": "fp16",
}
DPO_LORA_SDXL = DPO_LORA_SD15 | {"trainer.batch_size": 8, "trainer.max_steps": 2000}
# Diffusion-DPO's released launchers (SalesforceAIResearch/DiffusionDPO, launchers/*.sh)
# for RPO, whose own code was never released
RPO_SD15 = {
    "data.name": "pickapic",
    "data.caption_dropout": 0.2,
    "model.finetune": "full",
    "algo.tau": 0.5,  # the RPO paper
    "algo.clip_path": "ViT-H-14",
    "trainer.lr": 2.048e-5,  # --learning_rate 1e-8 --scale_lr on 2048 pairs
    "trainer.warmup_steps": 500,
    "trainer.max_steps": 2000,
    "trainer.optimizer": "adamw",
    "trainer.mixed_precision": "fp16",
}
RPO_SDXL = RPO_SD15 | {"trainer.optimizer": "adafactor", "trainer.warmup_steps": 200}
# the NCP authors' launchers (sakharok13/Aligning-Stable-Diffusion-with-Noise-Conditioned-
# Perception, scripts/train/*.sh)
NCP_SD15 = {
    "data.name": "pickapic",
    "model.lora.rank": 64,
    "model.lora.alpha": 64,
    "algo.layer": "mid",
    "trainer.batch_size": 64,
    "trainer.grad_accum": 8,
    "trainer.lr": 2.56e-4,
    "trainer.max_steps": 1000,
}
NCP_SDXL = {
    "data.name": "pickapic",
    "model.lora.rank": 64,
    "algo.layer": "down",
    "algo.timestep": "t-1",
    "trainer.batch_size": 8,
    "trainer.grad_accum": 64,
    "trainer.lr": 5.12e-6,
    "trainer.max_steps": 2000,
}
# the SPO authors' configs (RockeyCoss/SPO, configs/spo_*.py) and released SPMs
SPO_SD15 = {
    "data.name": "spo_prompts",
    "data.kind": "prompts",
    "algo.k": 4,
    "algo.threshold": 0.3,
    "algo.num_inner_steps": 0,
    "algo.steps": 20,
    "algo.divert_start_step": 4,
    "algo.beta": 10.0,
    "algo.eps": 0.1,
    "algo.spm_tower": "hf",
    "algo.spm_base": "yuvalkirstain/PickScore_v1",
    "algo.spm_checkpoint": f"{SPM_REPO}/sd-v1-5_step-aware_preference_model.bin",
    "model.lora.rank": 4,
    "trainer.batch_size": 10,
    "trainer.lr": 6e-5,
    "trainer.max_grad_norm": 0.0,  # the official clipping never runs
    "trainer.mixed_precision": "fp16",
}
SPO_SDXL = SPO_SD15 | {
    "algo.k": 2,
    "algo.threshold": 0.4,
    "algo.num_inner_steps": 3,  # chunks of 4 steps
    "algo.train_batch_size": 2,
    "algo.spm_checkpoint": f"{SPM_REPO}/sdxl_step-aware_preference_model.bin",
    "model.lora.rank": 64,
    "model.vae_path": "madebyollin/sdxl-vae-fp16-fix",
    "trainer.batch_size": 2,
    "trainer.grad_accum": 2,
    "trainer.lr": 1e-5,
}
DRTUNE = {"data.name": "spo_prompts", "reward.name": "pickscore", "algo.train_steps": 3}

NCP_FAMILY = {"sd15": NCP_SD15, "sdxl": NCP_SDXL}  # cpo and sft: the dpo launcher's settings
TABLE = {
    "dpo": {"sd15": DPO_LORA_SD15, "sdxl": DPO_LORA_SDXL},
    "rpo": {"sd15": RPO_SD15, "sdxl": RPO_SDXL},
    "ncp_dpo": NCP_FAMILY,
    "ncp_cpo": NCP_FAMILY,
    "ncp_sft": NCP_FAMILY,
    "spo": {"sd15": SPO_SD15, "sdxl": SPO_SDXL},
    "drtune": {"sd15": DRTUNE, "sdxl": DRTUNE},
}


def _expected(algo: str, model: str) -> dict:
    """SD2.1 has no published recipe of its own: it takes SD1.5's."""
    family = "sdxl" if model == "sdxl" else "sd15"
    if algo == "sft":  # the same script and launcher as DPO; SFT has no beta
        return {k: v for k, v in TABLE["dpo"][family].items() if k != "algo.beta"}
    return TABLE[algo][family]


ALGOS = config_group_options()["algo"]


@pytest.mark.parametrize(("algo", "model"), list(itertools.product(ALGOS, REAL_MODELS)))
def test_every_real_model_composes_the_published_recipe(algo, model):
    cfg = compose_config(f"algo={algo}", f"model={model}")
    assert cfg.algo.name == algo and cfg.model.name == model
    for key, value in _expected(algo, model).items():
        assert OmegaConf.select(cfg, key) == pytest.approx(value), key


@pytest.mark.parametrize(("algo", "model"), list(itertools.product(ALGOS, REAL_MODELS)))
def test_no_tiny_world_part_or_setting_reaches_a_real_model(algo, model):
    resolved = OmegaConf.to_container(
        compose_config(f"algo={algo}", f"model={model}"), resolve=True
    )
    text = repr(resolved)
    assert "tinyworld" not in text and "tiny_" not in text
    assert resolved["eval"]["rewards"] == [] and resolved["eval"]["prompts"] is None
    assert (resolved["trainer"]["lr"], resolved["trainer"]["max_steps"]) != (4e-4, 400)


def test_the_headline_command_is_the_spo_authors_sdxl_recipe():
    cfg = compose_config("algo=spo", "model=sdxl")
    assert SPO_PROMPTS in cfg.data.path
    assert (cfg.algo.k, cfg.algo.threshold, 1 + cfg.algo.num_inner_steps) == (2, 0.4, 4)
    assert (cfg.trainer.lr, cfg.model.lora.rank, cfg.trainer.mixed_precision) == (1e-5, 64, "fp16")
    assert cfg.algo.spm_checkpoint.endswith("sdxl_step-aware_preference_model.bin")


def test_what_the_user_types_wins_over_the_recipe():
    cfg = compose_config(
        "algo=spo", "model=sdxl", "data=prompts", "data.path=/p.txt", "trainer.lr=3e-6"
    )
    assert (cfg.data.name, cfg.data.path, cfg.trainer.lr) == ("prompts", "/p.txt", 3e-6)
    paper = compose_config("experiment=dpo_sdxl_paper")
    assert (paper.model.finetune, paper.trainer.optimizer, paper.trainer.lr) == (
        "full",
        "adafactor",
        2.048e-5,
    )
    assert paper.data.caption_dropout == 0.2 and paper.trainer.warmup_steps == 200


@pytest.mark.parametrize("model", ["tiny", "tiny_sd", "tiny_sdxl"])
def test_the_tiny_world_keeps_its_own_parts_and_settings(model):
    spo = compose_config("algo=spo", f"model={model}")
    assert spo.data.name == "tiny_prompts" and "tinyworld/assets/spm" in spo.algo.spm_checkpoint
    rpo = compose_config("algo=rpo", f"model={model}")
    assert rpo.data.name == "tiny_pairs" and "tinyworld/assets/clip" in rpo.algo.clip_path
    assert (rpo.trainer.lr, rpo.trainer.max_steps) == (4e-4, 400)
    assert list(rpo.eval.rewards) == ["oracle", "tiny_clip", "tiny_pickscore"]
