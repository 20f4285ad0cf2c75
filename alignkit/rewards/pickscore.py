"""PickScore (Kirstain et al. 2023, arXiv 2305.01569): a Hugging Face CLIPModel fine-tuned on
Pick-a-Pic, scoring ``logit_scale * cos(image, prompt)``.

The official recipe pairs the model ``yuvalkirstain/PickScore_v1`` with the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (shortest side to 224 bicubic, centre crop 224,
OpenAI CLIP mean/std). The processor's numbers are read from its config; the pixels go through
``resize_crop_normalise`` so that gradients reach them. Both load from a local folder or a hub
id (downloaded when the hub is reachable, else taken from the Hugging Face cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignkit import hub
from alignkit.rewards.preprocess import resize_crop_normalise
from alignkit.rewards.registry import REWARDS

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as processor configs store them


class HFClipScorer(nn.Module):
    """A transformers CLIPModel with its tokenizer and torch preprocessing."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_size: int = 224,
        crop_size: int = 224,
        mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073),
        std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711),
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_size, self.crop_size, self.interpolation = image_size, crop_size, interpolation
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    @classmethod
    def from_pretrained(cls, model_path: str, processor_path: str) -> HFClipScorer:
        """Model and processor from local folders or hub ids."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        model = _load(CLIPModel, model_path, "reward.path")
        tokenizer = _load(AutoTokenizer, processor_path, "reward.processor")
        processor = _load(CLIPImageProcessor, processor_path, "reward.processor")
        crop = processor.crop_size
        crop = crop["height"] if isinstance(crop, dict) or hasattr(crop, "height") else crop
        size = processor.size
        shortest = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
        return cls(
            model,
            tokenizer,
            image_size=int(shortest),
            crop_size=int(crop),
            mean=tuple(processor.image_mean),
            std=tuple(processor.image_std),
            interpolation=_RESAMPLE.get(int(processor.resample), "bicubic"),
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Shortest side to ``image_size``, centre crop ``crop_size``, normalise."""
        crop = (self.crop_size, self.crop_size)
        if self.image_size != self.crop_size:
            raise ValueError(
                f"shortest_edge {self.image_size} != crop {self.crop_size} is not supported"
            )
        return resize_crop_normalise(
            images, crop, "shortest", self.interpolation, self.mean, self.std
        )

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.model.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return nn.functional.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"expected a non-empty list of prompts, got {prompts!r}")
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).to(self.mean.device)
        pooled = self.model.text_model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).pooler_output
        return nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``logit_scale.exp() * cos`` ``[B]`` of each image with its own prompt."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pass one each")
        cosine = (self.image_features(images) * self.text_features(prompts)).sum(-1)
        return self.model.logit_scale.exp().float() * cosine


def _load(loader: Any, source: str, key: str) -> Any:
    """From a local folder, or a hub id (downloaded when the hub is reachable, else cached)."""
    try:
        return loader.from_pretrained(source, local_files_only=hub.local_files_only())
    except (OSError, ValueError) as err:
        where = "folder" if Path(source).exists() else "local folder or hub id"
        raise FileNotFoundError(
            f"could not load {loader.__name__} from {source!r} ({where}). Download it where "
            f"the hub is reachable (e.g. `huggingface-cli download {source}`) and pass the "
            f"folder as {key}=/path/to/folder. Cause: {err}"
        ) from None


class PickScoreReward:
    """PickScore ``[B]`` (about 18-23 for SD-quality images; differences drive training)."""

    differentiable = True

    def __init__(self, scorer: HFClipScorer) -> None:
        self.scorer = scorer.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.scorer.to(images.device)
        return self.scorer.score(images, prompts)


@REWARDS.register("pickscore")
def pickscore(path: str | None = None, processor: str | None = None) -> PickScoreReward:
    """PickScore from ``path`` (default: its hub id, if cached) and the ViT-H-14 processor."""
    scorer = HFClipScorer.from_pretrained(path or PICKSCORE_MODEL, processor or PICKSCORE_PROCESSOR)
    return PickScoreReward(scorer)
