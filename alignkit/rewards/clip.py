"""CLIP from open_clip, loaded from local files only, with preprocessing that gradients pass.

Rewards backpropagate into the generator, so the usual PIL preprocessing (resize, centre crop,
normalise) is redone here in torch on ``[B, 3, H, W]`` images in [0, 1]. Nothing can be
downloaded on these machines, so a model comes either from an open_clip model name plus a local
checkpoint file, or from a folder in open_clip's own format::

    open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
                                 (a bare model config, without "model_cfg", is accepted too)
    open_clip_model.safetensors  the weights (the token embedding may be stored as the rows
                                 kept by ``save(token_ids=...)``; the rest load as zeros)

``CLIPScoreReward`` (``tiny_clip``) scores ``100 * max(cos, 0)`` as CLIPScore does.

open_clip is imported where a model is built, not at module level: every reward registers on
``import alignkit.rewards``, and open_clip's import takes seconds that most runs never need.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignkit.rewards.preprocess import (
    INTERPOLATIONS,
    RESIZE_MODES,
    check_choice,
    resize_crop_normalise,
)
from alignkit.rewards.registry import REWARDS
from alignkit.tinyworld.assets import asset_path

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MODEL_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
TOKEN_EMBEDDING = "token_embedding.weight"
SPARSE_ROWS = "token_embedding.kept_rows"
SPARSE_VALUES = "token_embedding.kept_values"
OFFLINE_HINT = (
    "nothing can be downloaded here: pass a local folder holding "
    f"{CONFIG_FILE} + {WEIGHTS_FILE}, or an open_clip model name with a local checkpoint file"
)


class ClipModel(nn.Module):
    """An open_clip model with its tokenizer and torch preprocessing; features are normalised."""

    def __init__(self, model: nn.Module, tokenizer: Any, config: dict[str, Any]) -> None:
        import open_clip

        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg = config["model_cfg"]
        self.preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
        size = self.preprocess_cfg["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size[-2:])
        self.resize_mode = self.preprocess_cfg.get("resize_mode", "shortest")
        self.interpolation = self.preprocess_cfg.get("interpolation", "bicubic")
        check_choice("resize_mode", self.resize_mode, RESIZE_MODES)
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        for name in ("mean", "std"):
            values = torch.tensor(self.preprocess_cfg[name], dtype=torch.float32)
            self.register_buffer(name, values.view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_config(
        cls, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | None = None
    ) -> ClipModel:
        """A randomly initialised model (seed torch first for a reproducible one)."""
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
        return cls._build(config, weights=None)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ClipModel:
        """Load a folder in open_clip's format (see the module docstring)."""
        folder = Path(folder)
        config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (folder, config_path, weights):
            if not path.exists():
                raise FileNotFoundError(f"CLIP path {path} does not exist; {OFFLINE_HINT}")
        state = load_file(str(weights))
        if SPARSE_ROWS not in state:
            return cls._build(read_config(config_path), weights)
        clip = cls._build(read_config(config_path), weights=None)
        clip.model.load_state_dict(_densify_token_embedding(state, clip.model))
        return clip

    @classmethod
    def from_checkpoint(cls, model_name: str, checkpoint: str | Path) -> ClipModel:
        """A built-in open_clip architecture (e.g. ``ViT-H-14``) with weights from a local file."""
        import open_clip

        if model_name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model name {model_name!r}; use one of open_clip.list_models() "
                f"or a local folder holding {CONFIG_FILE} + {WEIGHTS_FILE}"
            )
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"CLIP checkpoint {checkpoint} does not exist; {OFFLINE_HINT}")
        model = open_clip.create_model(model_name, pretrained=str(checkpoint))
        tokenizer = open_clip.get_tokenizer(model_name)
        return cls(model, tokenizer, {"model_cfg": open_clip.get_model_config(model_name)})

    @classmethod
    def load(cls, source: str | Path, checkpoint: str | Path | None = None) -> ClipModel:
        """A folder, or an open_clip model name when ``checkpoint`` (a local file) is given."""
        if checkpoint is not None:
            return cls.from_checkpoint(str(source), checkpoint)
        return cls.from_folder(source)

    @classmethod
    def _build(cls, config: dict[str, Any], weights: Path | None) -> ClipModel:
        """open_clip reads the config from a temporary ``local-dir:`` folder, so nothing is
        registered in (or written into) its package; the weights are linked in beside it."""
        import open_clip

        text_cfg = config["model_cfg"].get("text_cfg", {})
        if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
            raise ValueError(
                "folders with a Hugging Face text tower are not supported; load the model by "
                "its open_clip name with a local checkpoint file instead"
            )
        with tempfile.TemporaryDirectory(prefix="alignkit-clip-") as scratch:
            (Path(scratch) / CONFIG_FILE).write_text(json.dumps(config))
            if weights is not None:
                (Path(scratch) / WEIGHTS_FILE).symlink_to(weights.resolve())
            with _quiet_root_logger():
                model = open_clip.create_model(f"local-dir:{scratch}")
                tokenizer = open_clip.get_tokenizer(f"local-dir:{scratch}")
        return cls(model, tokenizer, config)

    def save(self, folder: str | Path, token_ids: list[int] | None = None) -> Path:
        """Write the folder format, with fp16 weights (the tiny world ships these).

        ``token_ids`` keeps only those rows of the token embedding (the others load as zeros):
        a model trained on a small vocabulary then ships without 49408 rows it never used.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        weights = {
            name: tensor.detach().to(torch.float16).contiguous().cpu()
            for name, tensor in self.model.state_dict().items()
        }
        if token_ids is not None:
            rows = torch.tensor(sorted(set(token_ids)), dtype=torch.int64)
            weights[SPARSE_ROWS] = rows
            weights[SPARSE_VALUES] = weights.pop(TOKEN_EMBEDDING)[rows].contiguous()
        save_file(weights, str(folder / WEIGHTS_FILE))
        return folder

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learnt temperature, ``exp(logit_scale)`` (100 for OpenAI's CLIP and PickScore)."""
        return self.model.logit_scale.exp()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images ``[B, 3, H, W]`` -> the model's input: resize, centre crop, normalise."""
        return resize_crop_normalise(
            images,
            self.image_size,
            self.resize_mode,
            self.interpolation,
            self.mean.flatten(),
            self.std.flatten(),
        )

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids ``[B, context_length]`` on the model's device."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"expected a non-empty list of prompts, got {prompts!r}")
        return self.tokenizer(list(prompts)).to(self.mean.device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]``."""
        return self.model.encode_image(self.preprocess(images), normalize=True)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[B, D]``."""
        return self.model.encode_text(self.tokenize(prompts), normalize=True)

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity ``[B]`` of each image with its own prompt."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pass one each")
        return (self.image_features(images) * self.text_features(prompts)).sum(-1)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``logit_scale * cos`` ``[B]``: the logits PickScore compares across images."""
        return self.logit_scale * self.cosine(images, prompts)


def _densify_token_embedding(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Rebuild the full token embedding from the rows ``save(token_ids=...)`` kept."""
    state = dict(state)
    rows, values = state.pop(SPARSE_ROWS), state.pop(SPARSE_VALUES)
    dense = torch.zeros_like(model.state_dict()[TOKEN_EMBEDDING])
    dense[rows] = values.to(dense.dtype)
    state[TOKEN_EMBEDDING] = dense
    return state


def read_config(path: Path) -> dict[str, Any]:
    """``{"model_cfg": ..., "preprocess_cfg": ...}`` from either accepted config layout."""
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rewrite it") from None
    if "model_cfg" not in config:
        config = {"model_cfg": config}
    missing = [key for key in MODEL_CONFIG_KEYS if key not in config["model_cfg"]]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)}; expected an open_clip model config "
            f"({', '.join(MODEL_CONFIG_KEYS)}), optionally nested under 'model_cfg'"
        )
    return {"model_cfg": config["model_cfg"], "preprocess_cfg": config.get("preprocess_cfg", {})}


def load_clip(
    what: str,
    path: str | Path | None,
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
) -> ClipModel:
    """A folder (``path``), or an open_clip architecture name with a local checkpoint file."""
    if model_name is not None:
        if checkpoint is None:
            raise ValueError(
                f"{what}: model_name={model_name!r} needs reward.checkpoint=<local weights file>"
            )
        return ClipModel.from_checkpoint(model_name, checkpoint)
    if path is None:
        raise ValueError(
            f"{what} needs a local model: pass reward.path=<open_clip folder> or "
            "reward.model_name=<open_clip name> reward.checkpoint=<weights file>; " + OFFLINE_HINT
        )
    return ClipModel.load(path, checkpoint)


class CLIPScoreReward:
    """CLIPScore ``100 * max(cos, 0)`` (torchmetrics' scale; the paper's w = 2.5 is a rescale).

    The clamp keeps the familiar 0-100 range; it only cuts gradients for images that already
    disagree with their prompt, which a trained CLIP rarely sees for its own samples.
    """

    differentiable = True

    def __init__(self, clip: ClipModel) -> None:
        self.clip = clip.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.clip.to(images.device)
        return 100.0 * self.clip.cosine(images, prompts).clamp(min=0.0)


@REWARDS.register("tiny_clip")
def tiny_clip_score(
    path: str | Path | None = None, checkpoint: str | Path | None = None
) -> CLIPScoreReward:
    """CLIPScore with the tiny world's CLIP (or another folder)."""
    return CLIPScoreReward(ClipModel.load(path or asset_path("clip"), checkpoint))


@REWARDS.register("clipscore")
def clip_score(
    path: str | Path | None = None,
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
) -> CLIPScoreReward:
    """CLIPScore with any open_clip model (the paper's: ViT-B-32 with OpenAI's weights)."""
    return CLIPScoreReward(load_clip("reward=clipscore", path, model_name, checkpoint))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip logs through the root logger; under Hydra its "no pretrained weights loaded,
    initialized randomly" would show on every run, although the weights load right after."""
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(level)
