"""Export (kohya, diffusers, merged, Hub staging) and import (model.lora.load) of LoRAs.

Every round trip is checked by what matters to a user: the UNet computes the same thing after
the file went through another loader (diffusers' own, including its kohya converter). The
adapters use alpha != rank, where a loader that takes alpha to be the rank is visibly wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from alignkit.app import run as run_alignkit
from alignkit.config import LoRAConfig
from alignkit.export import export_run
from alignkit.export.__main__ import main as export_main
from alignkit.export.merged import base_scheduler, pipeline_from_components
from alignkit.export.run_folder import open_run
from alignkit.models import Backbone, build_components
from alignkit.models.lora_files import kohya_name, sgm_module_path
from alignkit.models.text import default_micro_cond, unet_conditioning
from alignkit.sampling import initial_noise
from tests.helpers import compose_config, write_pair_folder
from tests.model_helpers import tiny_backbone

RANK, ALPHA = 4, 2.0  # alpha != rank: scale 0.5, where alpha = rank would give 1.0
PROMPTS = ["a red circle", "a blue square"]


def _lora(**overrides) -> LoRAConfig:
    return LoRAConfig(**{"rank": RANK, "alpha": ALPHA, **overrides})


def _randomize_trainable(backbone: Backbone, seed: int = 1, std: float = 0.3) -> None:
    """Non-zero adapter weights (a fresh LoRA's up projection is zero: it would change
    nothing and every comparison would pass trivially)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in backbone.trainable_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _write_run(run_dir: Path, backbone: Backbone) -> Path:
    """A run folder as ``python -m alignkit`` leaves it: the config and ``final/``."""
    config = {
        "model": OmegaConf.structured(backbone.cfg),
        "algo": {"name": "dpo", "beta": 5000.0},
        "data": {"name": "pairs", "path": "/data/pairs"},
        "trainer": {"max_steps": 3, "batch_size": 2, "lr": 0.001},
    }
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    backbone.save_final(run_dir / "final")
    return run_dir


def _trained_run(tmp_path: Path, family: str, **model) -> tuple[Path, Backbone]:
    backbone = tiny_backbone(family, **{"lora": _lora(), **model})
    _randomize_trainable(backbone, std=0.3 if backbone.cfg.finetune == "lora" else 0.02)
    return _write_run(tmp_path / f"run_{family}", backbone), backbone


def _inputs(backbone: Backbone):
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([50, 700])
    micro = default_micro_cond(2, 32) if backbone.family == "sdxl" else None
    return x, t, backbone.encode_prompts(PROMPTS), micro


def _unet_output(unet, backbone: Backbone, inputs) -> torch.Tensor:
    x, t, text, micro = inputs
    kwargs = unet_conditioning(backbone.family, text, micro, torch.float32)
    with torch.no_grad():
        return unet(x, t, **kwargs).sample


def _fresh_pipeline(backbone: Backbone) -> DiffusionPipeline:
    """A diffusers pipeline of the same (seeded) tiny base, no adapter."""
    components = build_components(backbone.cfg)
    return pipeline_from_components(components, components.scheduler)


def _adapter_gap(backbone: Backbone, inputs) -> float:
    """How far the adapter moves the output: what the 1e-4 tolerances are small against."""
    adapted = backbone.predict(*inputs[:3], inputs[3])
    base = backbone.predict(*inputs[:3], inputs[3], reference=True)
    return (adapted - base).abs().max().item()


# -- kohya ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_kohya_file_loads_in_diffusers_as_the_run_adapter(tmp_path, family):
    run_dir, backbone = _trained_run(tmp_path, family)
    _, written = export_run(run_dir, "kohya")
    assert written == run_dir / "export" / "kohya_lora.safetensors"

    tensors = load_file(written)
    modules = {key.split(".")[0] for key in tensors}
    assert len(modules) == 32 and all(name.startswith("lora_unet_") for name in modules)
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert name in modules
    assert tensors[f"{name}.lora_down.weight"].shape == (RANK, 32)
    lora_a = backbone.unet.get_submodule(path).lora_A["default"].weight
    torch.testing.assert_close(tensors[f"{name}.lora_down.weight"], lora_a.detach())
    assert {tensors[f"{module}.alpha"].item() for module in modules} == {ALPHA}  # not the rank

    inputs = _inputs(backbone)
    pipeline = _fresh_pipeline(backbone)
    pipeline.load_lora_weights(str(written))
    expected = backbone.predict(*inputs[:3], inputs[3])
    got = _unet_output(pipeline.unet, backbone, inputs)
    assert (got - expected).abs().max().item() < 1e-4
    assert _adapter_gap(backbone, inputs) > 1e-2


def test_sgm_names_of_sdxl_attention_modules():
    """SDXL (2 layers per block): down block 1 holds input_blocks 4-5, down block 2 holds
    7-8, up block 0 holds output_blocks 0-2; the middle transformer is middle_block.1."""
    rest = "transformer_blocks.0.attn1.to_q"
    assert sgm_module_path(f"down_blocks.1.attentions.1.{rest}", 2) == f"input_blocks.5.1.{rest}"
    assert sgm_module_path(f"down_blocks.2.attentions.0.{rest}", 2) == f"input_blocks.7.1.{rest}"
    assert sgm_module_path(f"up_blocks.0.attentions.2.{rest}", 2) == f"output_blocks.2.1.{rest}"
    assert sgm_module_path(f"up_blocks.1.attentions.0.{rest}", 2) == f"output_blocks.3.1.{rest}"
    assert sgm_module_path(f"mid_block.attentions.0.{rest}", 2) == f"middle_block.1.{rest}"
    assert sgm_module_path("down_blocks.1.resnets.0.conv1", 2) is None


def test_kohya_file_with_sgm_names_imports_as_diffusers_reads_it(tmp_path):
    """kohya's own SDXL LoRAs name modules after webui's UNet; model.lora.load and diffusers'
    converter must agree on what such a file does."""
    run_dir, backbone = _trained_run(tmp_path, "sdxl")
    _, written = export_run(run_dir, "kohya")
    layers_per_block = backbone.unet.config.layers_per_block
    renamed = {}
    for key, tensor in load_file(written).items():
        module, _, suffix = key.partition(".")
        for path in (p for p, _ in backbone.unet.named_modules() if kohya_name(p) == module):
            module = kohya_name(sgm_module_path(path, layers_per_block))
        renamed[f"{module}.{suffix}"] = tensor
    assert any("input_blocks_1_1_" in key for key in renamed)
    assert any("output_blocks_" in key for key in renamed)
    sgm_file = tmp_path / "sgm.safetensors"
    save_file(renamed, str(sgm_file))

    inputs = _inputs(backbone)
    imported = tiny_backbone("sdxl", lora=_lora(load=str(sgm_file)))
    pipeline = _fresh_pipeline(backbone)
    pipeline.load_lora_weights(str(sgm_file))
    expected = backbone.predict(*inputs[:3], inputs[3])
    torch.testing.assert_close(imported.predict(*inputs[:3], inputs[3]), expected)
    by_diffusers = _unet_output(pipeline.unet, backbone, inputs)
    assert (by_diffusers - expected).abs().max().item() < 1e-4


# -- diffusers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_diffusers_export_keeps_alpha_through_a_reload(tmp_path, family):
    run_dir, backbone = _trained_run(tmp_path, family)
    _, written = export_run(run_dir, "diffusers", out=tmp_path / "adapter")
    with safe_open(str(written / "pytorch_lora_weights.safetensors"), "pt") as file:
        header = json.loads(file.metadata()["lora_adapter_metadata"])
    assert header["unet.r"] == RANK and header["unet.lora_alpha"] == ALPHA
    assert header["unet.target_modules"] == ["to_q", "to_k", "to_v", "to_out.0"]

    inputs = _inputs(backbone)
    pipeline = _fresh_pipeline(backbone)
    pipeline.load_lora_weights(str(written))
    got = _unet_output(pipeline.unet, backbone, inputs)
    assert (got - backbone.predict(*inputs[:3], inputs[3])).abs().max().item() < 1e-4
    assert _adapter_gap(backbone, inputs) > 1e-2


# -- import: model.lora.load ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
@pytest.mark.parametrize("alpha", [ALPHA, 8.0])
def test_model_lora_load_reproduces_the_exported_adapter(tmp_path, fmt, alpha):
    """Also with another configured alpha: the file's scale is folded into the weights."""
    run_dir, backbone = _trained_run(tmp_path, "sd")
    _, written = export_run(run_dir, fmt)
    imported = tiny_backbone("sd", lora=_lora(alpha=alpha, load=str(written)))
    inputs = _inputs(backbone)
    expected = backbone.predict(*inputs[:3], inputs[3])
    torch.testing.assert_close(imported.predict(*inputs[:3], inputs[3]), expected)
    assert imported.trainable_parameters()  # it trains on from there


def test_model_lora_load_refuses_a_file_that_does_not_fit_the_config(tmp_path):
    run_dir, _ = _trained_run(tmp_path, "sd")
    _, kohya = export_run(run_dir, "kohya")
    with pytest.raises(ValueError, match=r"rank 4 but model.lora.rank=8: set model.lora.rank=4"):
        tiny_backbone("sd", lora=_lora(rank=8, load=str(kohya)))
    with pytest.raises(ValueError, match=r"model.lora.target_modules"):
        tiny_backbone("sd", lora=_lora(target_modules=["to_q", "to_k"], load=str(kohya)))
    with pytest.raises(ValueError, match=r"model.lora.target_modules"):
        tiny_backbone(
            "sd", lora=_lora(target_modules=["to_q", "to_k"], load=str(run_dir / "final"))
        )
    with pytest.raises(ValueError, match=r"shape .* another architecture"):
        tiny_backbone("sdxl", lora=_lora(load=str(kohya)))
    text_lora = tmp_path / "text.safetensors"
    tensors = load_file(kohya)
    tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.ones(1)
    save_file(tensors, str(text_lora))
    with pytest.raises(ValueError, match=r"text encoder"):
        tiny_backbone("sd", lora=_lora(load=str(text_lora)))
    with pytest.raises(FileNotFoundError, match=r"no LoRA file"):
        tiny_backbone("sd", lora=_lora(load=str(tmp_path / "missing.safetensors")))


def test_model_lora_load_from_the_command_line_config(tmp_path):
    """``model.lora.load=...`` composes, and a zero-step run writes that LoRA back as final."""
    run_dir, _ = _trained_run(tmp_path, "sd")
    _, kohya = export_run(run_dir, "kohya")
    cfg = compose_config(
        "model=tiny_sd",
        f"model.lora.rank={RANK}",
        f"model.lora.alpha={ALPHA}",
        f"model.lora.load={kohya}",
        "data=pairs",
        f"data.path={write_pair_folder(tmp_path / 'pairs', rows=4, files=1)}",
        "trainer.max_steps=0",
        "trainer.batch_size=2",
        "trainer.progress_bar=false",
        f"output_dir={tmp_path / 'imported'}",
    )
    run_alignkit(cfg)
    final = load_file(tmp_path / "imported" / "final" / "pytorch_lora_weights.safetensors")
    original = load_file(run_dir / "final" / "pytorch_lora_weights.safetensors")
    assert final.keys() == original.keys()
    for key, tensor in original.items():
        torch.testing.assert_close(final[key], tensor)


# -- merged ---------------------------------------------------------------------------------------
def _ddim_images(pipeline: DiffusionPipeline) -> torch.Tensor:
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    return pipeline(
        PROMPTS,
        height=32,
        width=32,
        num_inference_steps=3,
        guidance_scale=3.0,
        latents=initial_noise([0, 1], (4, 8, 8)),
        output_type="pt",
    ).images


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_merged_pipeline_draws_what_base_plus_adapter_draws(tmp_path, family):
    run_dir, backbone = _trained_run(tmp_path, family)
    _, written = export_run(run_dir, "merged")
    merged = DiffusionPipeline.from_pretrained(written)
    assert not getattr(merged.unet, "peft_config", None)  # fused: no adapter left
    with_adapter = _fresh_pipeline(backbone)
    with_adapter.load_lora_weights(str(run_dir / "final"))
    base = _ddim_images(_fresh_pipeline(backbone))
    expected = _ddim_images(with_adapter)
    assert (_ddim_images(merged) - expected).abs().max().item() < 1e-4
    assert (base - expected).abs().max().item() > 1e-3


def test_merged_export_of_a_full_fine_tuning_run(tmp_path):
    run_dir, backbone = _trained_run(tmp_path, "sd", finetune="full")
    with pytest.raises(ValueError, match=r"full fine-tuning .* --format merged"):
        export_run(run_dir, "kohya")
    _, written = export_run(run_dir, "merged")
    unet = UNet2DConditionModel.from_pretrained(written / "unet")
    inputs = _inputs(backbone)
    expected = backbone.predict(*inputs[:3], inputs[3])
    assert (_unet_output(unet, backbone, inputs) - expected).abs().max().item() < 1e-5
    base = backbone.predict(*inputs[:3], inputs[3], reference=True)
    assert (expected - base).abs().max().item() > 1e-2


def test_merged_keeps_a_pretrained_base_s_scheduler_class(tmp_path):
    run_dir, backbone = _trained_run(tmp_path, "sd")
    base_dir = tmp_path / "base"
    _fresh_pipeline(backbone).save_pretrained(base_dir)
    scheduler_config = base_dir / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler_config.read_text())
    scheduler_config.write_text(json.dumps({**config, "_class_name": "DDIMScheduler"}))
    run = open_run(run_dir)
    run.model.init, run.model.path = "pretrained", str(base_dir)
    scheduler = base_scheduler(run, build_components(run.model))
    assert type(scheduler).__name__ == "DDIMScheduler"


# -- command line and Hub -------------------------------------------------------------------------
def _cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        export_main(list(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignkit: error: ") and "\n" not in err
    return err


def test_bad_input_is_one_clear_error_line(tmp_path, capsys):
    run_dir, _ = _trained_run(tmp_path, "sd")
    assert "choose one of diffusers, kohya, merged" in _cli_error(
        capsys, str(run_dir), "--format", "webui"
    )
    assert "--format" in _cli_error(capsys, str(run_dir))
    assert "not a run folder" in _cli_error(capsys, str(tmp_path / "nowhere"), "--format", "kohya")

    export_main([str(run_dir), "--format", "kohya"])
    written = run_dir / "export" / "kohya_lora.safetensors"
    before = written.read_bytes()
    assert "--overwrite" in _cli_error(capsys, str(run_dir), "--format", "kohya")
    assert written.read_bytes() == before
    export_main([str(run_dir), "--format", "kohya", "--overwrite"])
    assert written.is_file()
    assert "holds the run folder" in _cli_error(
        capsys, str(run_dir), "--format", "merged", "--out", str(tmp_path), "--overwrite"
    )
    assert run_dir.is_dir()
    assert "repository id" in _cli_error(
        capsys, str(run_dir), "--format", "kohya", "--push-to-hub", "not a/repo/id"
    )

    (run_dir / "final" / "pytorch_lora_weights.safetensors").unlink()
    assert "no final weights" in _cli_error(capsys, str(run_dir), "--format", "diffusers")


@pytest.mark.parametrize("offline", [True, False])
def test_push_to_hub_offline_stages_the_folder_with_a_model_card(
    tmp_path, capsys, monkeypatch, offline
):
    """Offline (HF_HUB_OFFLINE=1) or without a token nothing is sent: the folder that would be
    uploaded is written and the message says where."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    run_dir, _ = _trained_run(tmp_path, "sd")
    eval_result = {
        "prompts": "tiny_heldout",
        "samples": 10,
        "rewards": {
            "oracle": {
                "base": 0.3,
                "aligned": 0.4,
                "win_rate": {"rate": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 10},
            }
        },
        "grid": "eval_grid.png",
    }
    (run_dir / "eval.json").write_text(json.dumps(eval_result))
    (run_dir / "eval_grid.png").write_bytes(b"\x89PNG not really")
    export_main([str(run_dir), "--format", "kohya", "--push-to-hub", "someone/tiny-dpo"])
    hub = run_dir / "export" / "hub"
    reason = "HF_HUB_OFFLINE=1" if offline else "no Hugging Face token"
    out = capsys.readouterr().out
    assert f"not uploaded ({reason}" in out
    assert f"the folder that would be uploaded is {hub}" in out
    assert sorted(p.name for p in hub.iterdir()) == [
        "README.md",
        "eval_grid.png",
        "kohya_lora.safetensors",
    ]
    exported = run_dir / "export" / "kohya_lora.safetensors"
    assert (hub / "kohya_lora.safetensors").read_bytes() == exported.read_bytes()
    card = (hub / "README.md").read_text()
    assert "| oracle | 0.3000 | 0.4000 | 60.0% (50.0%–70.0%, n=10) |" in card
    assert "![base (left) vs aligned (right), same seeds](eval_grid.png)" in card
    assert "- algorithm: `dpo`" in card and f"LoRA rank {RANK}, alpha {ALPHA}" in card
    assert "```yaml\nmodel:\n  name: tiny_sd" in card
