"""Checkpoints of sharded training (FSDP / DeepSpeed ZeRO): the weights and optimizer go
through accelerate's save_state/load_state into ``sharded/``, the rest stays alignkit's.

accelerate turns FSDP on only for GPU-type launches (a CPU launch over gloo runs plain DDP),
so here the sharded code path is taken by one CPU process with ``is_sharded`` forced on:
that checks alignkit's side (what is written where, resume, final/). Real FSDP and ZeRO
shards need a GPU launch (docs/scaling.md, "Full fine-tuning"), not yet run.
"""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from alignkit.checkpoint import list_checkpoints
from tests.model_helpers import tiny_backbone, tiny_trainer


@pytest.fixture
def sharded(monkeypatch):
    monkeypatch.setattr("alignkit.trainer.is_sharded", lambda accelerator: True)


def _train(run_dir, max_steps: int):
    trainer = tiny_trainer(tiny_backbone(finetune="full"), run_dir, max_steps=max_steps)
    trainer.resume()
    trainer.fit([])
    return trainer


def test_a_sharded_run_resumed_from_its_checkpoint_ends_with_the_uninterrupted_weights(
    tmp_path, sharded
):
    _train(tmp_path / "whole", max_steps=3)
    _train(tmp_path / "split", max_steps=2)
    (checkpoint,) = list_checkpoints(tmp_path / "split" / "checkpoints")
    assert json.loads((checkpoint / "state.json").read_text())["sharded"] is True
    assert not (checkpoint / "trainable.safetensors").exists()
    assert not (checkpoint / "optimizer.safetensors").exists()
    assert (checkpoint / "sharded").is_dir() and (checkpoint / "rank_0.safetensors").is_file()

    resumed = _train(tmp_path / "split", max_steps=3)
    assert resumed.step == 3
    weights = "final/unet/diffusion_pytorch_model.safetensors"
    expected = load_file(tmp_path / "whole" / weights)
    got = load_file(tmp_path / "split" / weights)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_the_gathered_final_unet_loads_in_diffusers_with_the_trained_weights(tmp_path, sharded):
    trainer = _train(tmp_path, max_steps=1)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "final" / "unet")
    trained = trainer.backbone.unet.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, trained[key]), key
    untouched = tiny_backbone(finetune="full").unet.state_dict()
    assert any(not torch.equal(untouched[k], trained[k]) for k in trained)


def test_sharding_a_lora_is_refused_with_the_fix(tmp_path, sharded):
    with pytest.raises(ValueError, match="model.finetune='lora'.*--multi_gpu"):
        tiny_trainer(tiny_backbone(), tmp_path)


def test_single_process_checkpoints_keep_their_files(tmp_path):
    _train(tmp_path, max_steps=1)
    (checkpoint,) = list_checkpoints(tmp_path / "checkpoints")
    assert json.loads((checkpoint / "state.json").read_text())["sharded"] is False
    assert (checkpoint / "trainable.safetensors").is_file()
    assert not (checkpoint / "sharded").exists()


def test_a_bf16_reference_copy_halves_its_bytes_and_predicts_close_to_fp32():
    fp32 = tiny_backbone(finetune="full")
    bf16 = tiny_backbone(finetune="full", reference_dtype="bf16")

    def size(unet):
        return sum(p.numel() * p.element_size() for p in unet.parameters())

    assert size(bf16.reference_unet) * 2 == size(fp32.reference_unet)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    text = fp32.encode_prompts(["a red circle", "a blue square"])
    want = fp32.predict(x, t, text, reference=True)
    got = bf16.predict(x, t, text, reference=True)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="model.reference_dtype='bf17'"):
        tiny_backbone(finetune="full", reference_dtype="bf17")
