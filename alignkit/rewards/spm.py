"""The step-aware preference model (SPM) of SPO (Liang et al. 2024, docs/algorithms.md, "SPO").

A PickScore-style CLIP whose vision tower is told the diffusion timestep of the (predicted)
image it scores: ``t`` -> sinusoidal 256 -> MLP -> width, and DiT-style adaLN in every
vision layer (shift/scale after both LayerNorms, gates on the attention and MLP branches)
plus shift/scale on the pooled output. The modulation's last Linear starts at zero weight
with the gates' bias at one, so at init the SPM scores exactly like the CLIP it wraps.

Two towers are supported, because the two places a user's model comes from differ:

* Hugging Face ``transformers.CLIPModel`` — PickScore_v1 and the released SPM checkpoints
  (github RockeyCoss/SPO) are in this layout. The added parameters are attached where the
  authors' model keeps them (``vision_model.encoder.layers.<i>.adaLN_modulation.1``,
  ``vision_model.adaLN_modulation.1``, ``t_embedder.mlp.{0,2}``), so their checkpoint loads
  on top of PickScore_v1 with ``strict=False`` (their ``model.`` prefix is accepted).
* open_clip, through ``ClipModel`` (the tiny world's CLIP and PickScore are in this format);
  the parameters sit on ``visual.transformer.resblocks.<i>`` / ``visual`` / the model.

The modulation is installed with forward hooks, not by replacing modules, so the wrapped
model's own state-dict keys are unchanged and its weights load as they are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from alignkit import hub
from alignkit.rewards.clip import ClipModel
from alignkit.rewards.preprocess import centre_crop_or_pad, check_images, shortest_side_size
from alignkit.tinyworld.assets import asset_path

FREQUENCY_DIM = 256
#: Buffers older transformers saved with CLIPModel (the released SPMs carry them); not weights.
STALE_BUFFER_SUFFIX = "embeddings.position_ids"
SPM_WEIGHTS_FILE = "spm_adapter.safetensors"
#: CLIP's normalisation (OpenAI / laion ViT-H-14 processor: PickScore's preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def timestep_embedding(t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 1e4):
    """Sinusoidal features ``[B, dim]``: cosines then sines (DiT's / GLIDE's layout)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs.to(t.device)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """``t`` -> sinusoid -> Linear -> SiLU -> Linear (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_DIM, width), nn.SiLU(), nn.Linear(width, width)
        )
        for index in (0, 2):
            nn.init.normal_(self.mlp[index].weight, std=0.02)
            nn.init.zeros_(self.mlp[index].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


def adaln_modulation(width: int, chunks: int, gates: tuple[int, ...] = ()) -> nn.Sequential:
    """SiLU -> Linear(width, chunks * width), weight zero; bias zero except gate chunks at one,
    so the modulation starts as the identity."""
    linear = nn.Linear(width, chunks * width)
    nn.init.zeros_(linear.weight)
    with torch.no_grad():
        linear.bias.zero_()
        for chunk in gates:
            linear.bias[chunk * width : (chunk + 1) * width] = 1.0
    return nn.Sequential(nn.SiLU(), linear)


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``[B, D]`` modulation over a batch-first ``[B, L, D]`` or ``[B, D]`` tensor."""
    return value.unsqueeze(1) if like.dim() == 3 else value


class _TowerLayout:
    """Where a tower keeps its layers, norms and branches (names differ per library)."""

    def __init__(self, root, layers, norm1, branch1, norm2, branch2, final_norm, width):
        self.root, self.layers, self.final_norm, self.width = root, layers, final_norm, width
        self.names = (norm1, branch1, norm2, branch2)


def _open_clip_layout(clip: ClipModel) -> _TowerLayout:
    visual = clip.model.visual
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError("open_clip towers with attention pooling are not supported by the SPM")
    width = visual.class_embedding.shape[-1]
    return _TowerLayout(
        visual, visual.transformer.resblocks, "ln_1", "ls_1", "ln_2", "ls_2", visual.ln_post, width
    )


def _hf_layout(model: nn.Module) -> _TowerLayout:
    vision = model.vision_model
    return _TowerLayout(
        vision,
        vision.encoder.layers,
        "layer_norm1",
        "self_attn",
        "layer_norm2",
        "mlp",
        vision.post_layernorm,
        model.config.vision_config.hidden_size,
    )


class StepAwarePreferenceModel(nn.Module):
    """``score(images, prompts, timesteps) = exp(logit_scale) * cos(img(x, t), txt(prompt))``.

    ``images`` are ``[B, 3, H, W]`` in [0, 1], ``timesteps`` the diffusion timesteps ``[B]``.
    """

    def __init__(self, tower: str, model: nn.Module, preprocess: dict[str, Any], tokenizer):
        super().__init__()
        if tower not in ("open_clip", "hf"):
            raise ValueError(f"tower={tower!r}: choose 'open_clip' or 'hf'")
        self.tower = tower
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = preprocess["size"]
        self.interpolation = preprocess.get("interpolation", "bicubic")
        self.register_buffer("mean", torch.tensor(preprocess["mean"]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(preprocess["std"]).view(1, 3, 1, 1), False)
        clip_module = model.model if tower == "open_clip" else model
        layout = _open_clip_layout(model) if tower == "open_clip" else _hf_layout(model)
        self._time_cond: torch.Tensor | None = None
        # parameters where the authors' checkpoint keeps them (see the module doc)
        clip_module.t_embedder = TimestepEmbedder(layout.width)
        layout.root.adaLN_modulation = adaln_modulation(layout.width, 2)
        for layer in layout.layers:
            layer.adaLN_modulation = adaln_modulation(layout.width, 6, gates=(2, 5))
            self._hook_layer(layer, layout.names)
        final = layout.root.adaLN_modulation
        layout.final_norm.register_forward_hook(
            lambda _m, _i, out: self._shift_scale(out, final(self._cond()).chunk(2, dim=1))
        )
        self._clip_module = [clip_module]  # not a submodule: no duplicate state-dict keys

    # -- the adaLN hooks ---------------------------------------------------------------------
    def _cond(self) -> torch.Tensor:
        if self._time_cond is None:
            raise RuntimeError("the SPM's vision tower needs timesteps: call image_features")
        return self._time_cond

    @staticmethod
    def _shift_scale(out: torch.Tensor, shift_scale) -> torch.Tensor:
        shift, scale = shift_scale
        return out * (1 + _per_sample(scale, out)) + _per_sample(shift, out)

    def _hook_layer(self, layer: nn.Module, names: tuple[str, str, str, str]) -> None:
        norm1, branch1, norm2, branch2 = (getattr(layer, name) for name in names)
        chunks: dict[str, tuple[torch.Tensor, ...]] = {}

        def modulation() -> tuple[torch.Tensor, ...]:
            return chunks["value"]

        def before_first_norm(_module, _inputs):
            chunks["value"] = layer.adaLN_modulation(self._cond()).chunk(6, dim=1)

        def gate(out, value):
            if isinstance(out, tuple):  # HF attention returns (hidden, weights)
                return (out[0] * _per_sample(value, out[0]), *out[1:])
            return out * _per_sample(value, out)

        norm1.register_forward_pre_hook(before_first_norm)
        norm1.register_forward_hook(lambda _m, _i, o: self._shift_scale(o, modulation()[0:2]))
        branch1.register_forward_hook(lambda _m, _i, o: gate(o, modulation()[2]))
        norm2.register_forward_hook(lambda _m, _i, o: self._shift_scale(o, modulation()[3:5]))
        branch2.register_forward_hook(lambda _m, _i, o: gate(o, modulation()[5]))

    # -- features and scores -----------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> resize the short side, centre crop, normalise (torch only): the
        open_clip tower's own ``ClipModel.preprocess``; for the HF tower the authors' SPM
        preprocessing (bicubic without antialiasing)."""
        if self.tower == "open_clip":
            return self.model.preprocess(images)
        check_images(images)
        height, width = images.shape[-2:]
        size = shortest_side_size(height, width, self.image_size)
        if size != (height, width):
            images = F.interpolate(
                images.float(), size=size, mode=self.interpolation, align_corners=False
            )
        images = centre_crop_or_pad(images, self.image_size, self.image_size)
        return (images - self.mean) / self.std

    def image_features(self, images: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings conditioned on the timesteps ``[B]``."""
        if timesteps.shape != (images.shape[0],):
            raise ValueError(
                f"timesteps of shape {tuple(timesteps.shape)} for {images.shape[0]} images; "
                "pass one timestep per image"
            )
        pixels = self.preprocess(images.to(self.mean.device))
        clip_module = self._clip_module[0]
        self._time_cond = clip_module.t_embedder(timesteps.to(self.mean.device))
        try:
            if self.tower == "open_clip":
                features = clip_module.encode_image(pixels)
            else:
                pooled = clip_module.vision_model(pixel_values=pixels).pooler_output
                features = clip_module.visual_projection(pooled)
        finally:
            self._time_cond = None
        return F.normalize(features.float(), dim=-1)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"expected a non-empty list of prompts, got {prompts!r}")
        clip_module = self._clip_module[0]
        if self.tower == "open_clip":
            features = clip_module.encode_text(self.tokenizer(list(prompts)).to(self.mean.device))
        else:
            tokens = self.tokenizer(
                list(prompts), padding="max_length", truncation=True, return_tensors="pt"
            ).input_ids.to(self.mean.device)
            pooled = clip_module.text_model(input_ids=tokens).pooler_output
            features = clip_module.text_projection(pooled)
        return F.normalize(features.float(), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._clip_module[0].logit_scale.exp()

    def score(self, images: torch.Tensor, prompts: list[str], timesteps: torch.Tensor):
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pass one each")
        cos = (self.image_features(images, timesteps) * self.text_features(prompts)).sum(-1)
        return self.logit_scale * cos

    __call__ = score

    # -- the added (step-aware) parameters ---------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The timestep embedder and adaLN weights only (the base CLIP is loaded separately)."""
        return {
            k: v.detach().cpu().contiguous()
            for k, v in self._clip_module[0].state_dict().items()
            if "adaLN_modulation" in k or k.startswith("t_embedder.")
        }

    def load_weights(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load a (possibly partial) state dict in the wrapped model's layout, ``strict=False``
        like the released checkpoints; an ``model.`` prefix is stripped. The released files
        were saved by a transformers that still stored CLIP's ``position_ids`` buffers (now
        computed, not stored): those keys are dropped. Any other unknown key, or absent keys of
        the added parameters, raise: such a checkpoint is not an SPM for this tower."""
        state = {
            k.removeprefix("model."): v
            for k, v in state.items()
            if not k.endswith(STALE_BUFFER_SUFFIX)
        }
        own = self._clip_module[0].state_dict()
        unexpected = [k for k in state if k not in own]
        if unexpected:
            raise ValueError(
                f"{len(unexpected)} keys match no parameter of this model (first: "
                f"{unexpected[:3]}); is the base CLIP the one the SPM checkpoint was trained on?"
            )
        missing = [k for k in self.adapter_state_dict() if k not in state]
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} step-aware parameters (first: "
                f"{missing[:3]}): it is not an SPM checkpoint for this tower"
            )
        self._clip_module[0].load_state_dict(state, strict=False)
        return sorted(set(own) - set(state))

    def save_base_clip(self, folder: str | Path) -> Path:
        """The wrapped open_clip model alone, in ``ClipModel``'s folder format (the
        step-aware parameters go to ``save_adapter``), e.g. after fine-tuning all of it."""
        if self.tower != "open_clip":
            raise ValueError(
                "save_base_clip writes open_clip folders; save an HF tower with "
                "its own save_pretrained"
            )
        from alignkit.rewards.clip import CONFIG_FILE, WEIGHTS_FILE

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"model_cfg": self.model.model_cfg, "preprocess_cfg": self.model.preprocess_cfg}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        adapter = set(self.adapter_state_dict())
        weights = {
            k: v.detach().float().cpu().contiguous()
            for k, v in self.model.model.state_dict().items()
            if k not in adapter
        }
        save_file(weights, str(folder / WEIGHTS_FILE))
        return folder

    def save_adapter(self, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """``dtype=float16`` halves the file (the tiny world ships it so, to stay small)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.to(dtype) for k, v in self.adapter_state_dict().items()}
        save_file(state, str(folder / SPM_WEIGHTS_FILE))
        return folder / SPM_WEIGHTS_FILE

    # -- builders ------------------------------------------------------------------------------
    @classmethod
    def from_clip(cls, clip: ClipModel) -> StepAwarePreferenceModel:
        """Wrap an open_clip ``ClipModel`` (its preprocessing and tokenizer are reused)."""
        preprocess = {
            "size": clip.image_size[0],
            "mean": clip.mean.flatten().tolist(),
            "std": clip.std.flatten().tolist(),
            "interpolation": clip.interpolation,
        }
        return cls("open_clip", clip, preprocess, clip.tokenizer)

    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer) -> StepAwarePreferenceModel:
        """Wrap a ``transformers.CLIPModel`` (PickScore_v1), with PickScore's preprocessing."""
        size = model.config.vision_config.image_size
        preprocess = {"size": size, "mean": CLIP_MEAN, "std": CLIP_STD}
        return cls("hf", model, preprocess, tokenizer)


#: A tiny open_clip architecture for random-init SPMs (tests and smoke runs).
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_random_spm(seed: int = 0) -> StepAwarePreferenceModel:
    """A random-init tiny SPM (deterministic in ``seed``): it ranks arbitrarily."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return StepAwarePreferenceModel.from_clip(ClipModel.from_config(TINY_CLIP_CONFIG))


def tiny_world_spm_base() -> Path:
    """The CLIP a tiny-world SPM starts from: its pickscore, else (not yet built) its clip."""
    pickscore = Path(asset_path("pickscore"))
    return pickscore if pickscore.is_dir() else Path(asset_path("clip"))


def load_spm(
    base: str | Path,
    checkpoint: str | Path | None = None,
    tower: str = "open_clip",
    tokenizer: str | Path | None = None,
) -> StepAwarePreferenceModel:
    """An SPM from a base CLIP plus (optionally) trained step-aware weights.

    ``tower=hf``: ``base`` is PickScore_v1 (a hub id or local folder, transformers format),
    ``tokenizer`` its processor (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), and ``checkpoint``
    the authors' ``*.bin`` or a ``.safetensors`` state dict (a local file, or
    ``owner/repo/file`` on the hub). ``tower=open_clip``: ``base`` is a ClipModel folder,
    ``checkpoint`` a folder or file written by ``save_adapter``. Hub parts download when the
    hub is reachable and come from the cache when it is not.
    """
    if tower == "hf":
        from transformers import CLIPModel, CLIPTokenizer

        offline = hub.local_files_only()
        model = CLIPModel.from_pretrained(str(base), local_files_only=offline)
        spm = StepAwarePreferenceModel.from_hf(
            model, CLIPTokenizer.from_pretrained(str(tokenizer or base), local_files_only=offline)
        )
    elif tower == "open_clip":
        spm = StepAwarePreferenceModel.from_clip(ClipModel.load(base))
    else:
        raise ValueError(f"tower={tower!r}: choose 'open_clip' or 'hf'")
    if checkpoint is not None:
        local = (
            checkpoint
            if Path(checkpoint).is_dir()
            else hub.resolve_file(str(checkpoint), "algo.spm_checkpoint")
        )
        spm.load_weights(read_state_dict(local))
    return spm


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """safetensors (a file, or a folder holding ``spm_adapter.safetensors``), or the authors'
    torch ``.bin`` loaded with ``weights_only=True`` (tensors only, nothing unpickled)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPM_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"SPM checkpoint {path} does not exist; pass a local file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)
