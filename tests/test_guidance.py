"""Classifier-free guidance's unconditional input, checked against diffusers' pipelines."""

from __future__ import annotations

import json

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from alignkit.config import ModelConfig
from alignkit.models import build_backbone
from alignkit.models.components import pipeline_from_components
from alignkit.models.tiny import tiny_sdxl_components
from alignkit.sampling import guided_conditioning
from tests.model_helpers import tiny_backbone

PROMPTS = ["a red circle", "a blue square"]


def _pipeline(backbone, kind):
    modules = {
        "vae": backbone.vae,
        "text_encoder": backbone.text_encoders[0],
        "tokenizer": backbone.tokenizers[0],
        "unet": backbone.unet,
        "scheduler": backbone.scheduler,
    }
    if kind is StableDiffusionXLPipeline:
        modules |= {
            "text_encoder_2": backbone.text_encoders[1],
            "tokenizer_2": backbone.tokenizers[1],
        }
    else:
        modules |= {"safety_checker": None, "feature_extractor": None}
    return kind(**modules)


def test_sdxl_guidance_uses_zeros_as_diffusers_sdxl_pipeline_does():
    backbone = tiny_backbone("sdxl")
    pipe = _pipeline(backbone, StableDiffusionXLPipeline)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    text, micro = guided_conditioning(backbone, PROMPTS)
    uncond = {k: v[: len(PROMPTS)] for k, v in text.items()}
    cond = {k: v[len(PROMPTS) :] for k, v in text.items()}
    assert negative.abs().max() == 0 and negative_pooled.abs().max() == 0
    torch.testing.assert_close(uncond["prompt_embeds"], negative.float())
    torch.testing.assert_close(uncond["pooled_prompt_embeds"], negative_pooled.float())
    torch.testing.assert_close(cond["prompt_embeds"], embeds.float())
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled.float())
    assert micro.shape == (2 * len(PROMPTS), 6)


def test_sd_guidance_encodes_the_empty_prompt_as_diffusers_sd_pipeline_does():
    backbone = tiny_backbone("sd")
    pipe = _pipeline(backbone, StableDiffusionPipeline)
    embeds, negative = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    text, _ = guided_conditioning(backbone, PROMPTS)
    assert negative.abs().max() > 0  # "" encodes to a non-zero embedding
    torch.testing.assert_close(text["prompt_embeds"][: len(PROMPTS)], negative.float())
    torch.testing.assert_close(text["prompt_embeds"][len(PROMPTS) :], embeds.float())


def test_an_sdxl_folder_that_turns_the_zeros_off_gets_the_empty_prompt(tmp_path):
    components = tiny_sdxl_components(32, "epsilon")
    components.zero_negative_prompt = False
    pipeline_from_components(components).save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["force_zeros_for_empty_prompt"] is False
    cfg = ModelConfig(name="sdxl", family="sdxl", path=str(tmp_path / "model"), resolution=32)
    backbone = build_backbone(cfg)
    uncond = backbone.unconditional_text(2)
    assert uncond["prompt_embeds"].abs().max() > 0
    torch.testing.assert_close(
        uncond["prompt_embeds"][:1], backbone.encode_prompts([""])["prompt_embeds"]
    )
