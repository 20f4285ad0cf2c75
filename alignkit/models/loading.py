"""Load a pretrained SD1.5-family or SDXL model from a hub id or a local diffusers folder."""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from alignkit import hub
from alignkit.models.components import Components
from alignkit.tinyworld.assets import asset_path


class ModelLoadError(RuntimeError):
    """A model path that cannot be loaded; the message says why and what to do."""


def _looks_like_local_path(path: str) -> bool:
    """Hub ids are ``org/name``; anything else is meant as a folder on this machine."""
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or os.path.exists(path)


def check_model_path(path: str | None) -> str:
    """``path`` expanded, if it can name a model (a hub id or a diffusers folder); else a
    ModelLoadError that says what is wrong with it."""
    if not path:
        raise ModelLoadError(
            "model.path is empty: pass a hub id (e.g. model.path=runwayml/stable-diffusion-v1-5) "
            "or a local diffusers folder, or use model=tiny_sd / model=tiny_sdxl"
        )
    expanded = os.path.expanduser(path)
    if expanded == asset_path("base_model") and not os.path.isdir(expanded):
        raise ModelLoadError(
            "model=tiny: the tiny world's pretrained model is not shipped yet "
            "(docs/tiny_world.md); "
            "build it with `python experiments/tiny_world/build.py`, or use model=tiny_sd"
        )
    if _looks_like_local_path(path) and not os.path.isdir(expanded):
        raise ModelLoadError(
            f"model.path={path!r} looks like a local path but no such folder exists; "
            "pass the folder that holds model_index.json (unet/, vae/, text_encoder/, ...)"
        )
    unet_config = os.path.join(expanded, "unet", "config.json")
    if os.path.isdir(expanded) and not os.path.isfile(unet_config):
        raise ModelLoadError(
            f"model.path={path!r} is a folder but not a diffusers model: expected "
            "unet/config.json, vae/, text_encoder/, tokenizer/ and scheduler/ inside it"
        )
    return expanded


def _load(kind, path: str, subfolder: str | None, **kwargs):
    try:
        return kind.from_pretrained(path, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "the hub is unreachable from here (offline)"
            if offline or not os.path.isdir(path)
            else "the folder is incomplete"
        )
        raise ModelLoadError(
            f"could not load {subfolder or 'the model'!r} from {path!r}: {hint}. Download the "
            f"model on a machine with access and pass its local folder as model.path. ({error})"
        ) from None


def load_pretrained_components(
    path: str | None,
    family: str,
    revision: str | None = None,
    variant: str | None = None,
    vae_path: str | None = None,
) -> Components:
    """Every frozen and trainable module of the model, in float32 on the CPU."""
    path = check_model_path(path)
    # float32 whatever the files hold (transformers 5 would keep fp16 files in fp16); the
    # Backbone casts the frozen modules to the mixed-precision dtype itself.
    common = {"revision": revision, "variant": variant, "torch_dtype": torch.float32}
    unet = _load(UNet2DConditionModel, path, "unet", **common)
    if vae_path:
        vae = _load(AutoencoderKL, os.path.expanduser(vae_path), None, torch_dtype=torch.float32)
    else:
        vae = _load(AutoencoderKL, path, "vae", **common)
    scheduler = _load(DDPMScheduler, path, "scheduler", revision=revision)
    if family == "sd":
        encoders = [_load(CLIPTextModel, path, "text_encoder", **common)]
        tokenizers = [_load(CLIPTokenizer, path, "tokenizer", revision=revision)]
    elif family == "sdxl":
        encoders = [
            _load(CLIPTextModel, path, "text_encoder", **common),
            _load(CLIPTextModelWithProjection, path, "text_encoder_2", **common),
        ]
        tokenizers = [
            _load(CLIPTokenizer, path, "tokenizer", revision=revision),
            _load(CLIPTokenizer, path, "tokenizer_2", revision=revision),
        ]
    else:
        raise ModelLoadError(f"unknown model.family={family!r}; choose 'sd' or 'sdxl'")
    zeros = family == "sdxl" and _forces_zero_negative_prompt(path, revision)
    return Components(family, unet, vae, scheduler, encoders, tokenizers, zeros)


def _forces_zero_negative_prompt(path: str, revision: str | None) -> bool:
    """SDXL's ``force_zeros_for_empty_prompt`` from model_index.json; True (diffusers' SDXL
    pipeline default, SDXL base's value) when the file does not say."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(
            path, revision=revision, local_files_only=hub.local_files_only()
        )
    except (OSError, ValueError):
        return True
    return bool(index.get("force_zeros_for_empty_prompt", True))
