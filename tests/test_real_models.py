"""Real-model commands, offline, on local folders of tiny random-init models of the real classes.

`model=sd15 model.path=<folder>` runs the SD1.5 code path exactly as a user's local copy of
SD1.5 would: diffusers folder loading, the sd15 recipe, and each algorithm's own parts given as
local folders (RPO's open_clip CLIP, SPO's transformers PickScore + released-layout SPM, DRTune's
PickScore reward). Without its part, an algorithm stops with one clear error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from alignkit.app import run
from alignkit.models.components import pipeline_from_components
from alignkit.models.tiny import tiny_sd_components
from alignkit.models.tokenizer import offline_clip_tokenizer
from alignkit.parts import MissingPartsError, Part, check_parts
from alignkit.rewards.clip import ClipModel
from alignkit.rewards.spm import TINY_CLIP_CONFIG, StepAwarePreferenceModel
from tests.helpers import compose_config, write_pair_folder

#: What makes the sd15 recipe (fp16, batch 16, Pick-a-Pic at 512 px) fit a CPU test.
CPU_SIZE = [
    "model.resolution=32",
    "model.gradient_checkpointing=false",
    "trainer.mixed_precision=no",
    "trainer.max_steps=2",
    "trainer.batch_size=2",
    "trainer.grad_accum=1",
    "trainer.warmup_steps=0",
    "trainer.checkpoint_every=2",
    "trainer.progress_bar=false",
]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """Local copies of every part: the model, pairs, prompts, a CLIP, PickScore + an SPM."""
    root = tmp_path_factory.mktemp("real-parts")
    components = tiny_sd_components(32, "epsilon")
    pipeline_from_components(components).save_pretrained(root / "sd15")
    write_pair_folder(root / "pairs")
    prompts = root / "prompts.json"  # the SPO authors' file format
    prompts.write_text(json.dumps([{"caption": f"a picture of thing {i}"} for i in range(6)]))
    torch.manual_seed(0)
    ClipModel.from_config(TINY_CLIP_CONFIG).save(root / "open_clip")
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    pickscore = CLIPModel(config).eval()
    pickscore.save_pretrained(root / "pickscore")
    offline_clip_tokenizer().save_pretrained(root / "processor")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(root / "processor")
    spm = StepAwarePreferenceModel.from_hf(pickscore, offline_clip_tokenizer())
    released = {f"model.{k}": v for k, v in spm.model.state_dict().items()}
    released["model.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(released, root / "sd-v1-5_step-aware_preference_model.bin")
    return {"root": root}


def _part_settings(algo: str, root: Path) -> list[str]:
    pairs = ["data=pairs", f"data.path={root / 'pairs'}", "data.caption_dropout=0"]
    prompts = ["data=prompts", f"data.path={root / 'prompts.json'}"]
    return {
        "rpo": [*pairs, f"algo.clip_path={root / 'open_clip'}", "algo.clip_checkpoint=null"],
        "spo": [
            *prompts,
            f"algo.spm_base={root / 'pickscore'}",
            f"algo.spm_tokenizer={root / 'processor'}",
            f"algo.spm_checkpoint={root / 'sd-v1-5_step-aware_preference_model.bin'}",
            "algo.steps=6",
            "algo.divert_start_step=3",
            "algo.threshold=0",
            "algo.train_batch_size=2",
        ],
        "drtune": [
            *prompts,
            f"reward.path={root / 'pickscore'}",
            f"reward.processor={root / 'processor'}",
            "algo.steps=4",
        ],
    }.get(algo, pairs)


@pytest.mark.parametrize(
    "algo", ["dpo", "sft", "rpo", "ncp_dpo", "ncp_cpo", "ncp_sft", "spo", "drtune"]
)
def test_every_algorithm_runs_two_steps_on_a_local_sd15_folder(algo, parts, tmp_path):
    root = parts["root"]
    cfg = compose_config(
        f"algo={algo}",
        "model=sd15",
        f"model.path={root / 'sd15'}",
        *CPU_SIZE,
        *_part_settings(algo, root),
        f"output_dir={tmp_path / 'run'}",
    )
    result = run(cfg)
    assert result.train.step == 2
    final = tmp_path / "run" / "final"
    if algo == "rpo":  # its published recipe fine-tunes the whole UNet
        assert (final / "unet" / "config.json").is_file()
    else:
        lora = load_file(str(final / "pytorch_lora_weights.safetensors"))
        assert lora and all("lora" in key for key in lora)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2]


@pytest.mark.parametrize(
    ("algo", "key", "unset"),
    [
        ("rpo", "needs a CLIP", "algo.clip_path=null"),
        ("spo", "needs a step-aware", "algo.spm_base=null"),
    ],
)
def test_without_its_part_an_algorithm_stops_and_names_the_keys(algo, key, unset, parts, tmp_path):
    root = parts["root"]
    settings = [s for s in _part_settings(algo, root) if not s.startswith(unset.split("=")[0])]
    cfg = compose_config(
        f"algo={algo}", "model=sd15", f"model.path={root / 'sd15'}", *CPU_SIZE, *settings,
        unset, "algo.clip_checkpoint=null" if algo == "rpo" else "algo.spm_checkpoint=null",
        f"output_dir={tmp_path / 'run'}",
    )  # fmt: skip
    with pytest.raises(ValueError, match=key) as error:
        run(cfg)
    assert "tinyworld" not in str(error.value)


def test_offline_every_missing_part_is_named_in_one_error(tmp_path):
    cfg = compose_config("algo=spo", "model=sdxl", f"output_dir={tmp_path / 'run'}")
    with pytest.raises(MissingPartsError) as error:
        run(cfg)
    message = str(error.value)
    for key in (
        "model.path",
        "model.vae_path",
        "data.path",
        "algo.spm_base",
        "algo.spm_tokenizer",
        "algo.spm_checkpoint",
    ):
        assert f"{key}=" in message and f"pass {key}=<local copy>" in message
    assert message.startswith("6 part(s) of this run cannot be had here")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_cli_prints_the_missing_parts_as_one_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "alignkit", "algo=rpo", "model=sd15",
         f"model.path={tmp_path / 'absent'}", f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("alignkit: error:") == 1 and "Traceback" not in result.stderr
    assert "model.path=" in result.stderr and "algo.clip_checkpoint=" in result.stderr


def test_a_malformed_hub_file_is_named_not_a_traceback():
    part = Part("the SPM weights", "algo.spm_checkpoint", "owner/spm.bin", "file")
    with pytest.raises(MissingPartsError, match=r"algo.spm_checkpoint=owner/name/file-in-repo"):
        check_parts([part])
