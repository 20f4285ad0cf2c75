"""The LAION aesthetic predictor (improved-aesthetic-predictor, "sac+logos+ava1-l14-linearMSE"):
a linear-layer MLP on the L2-normalised CLIP ViT-L/14 image embedding, predicting a 1-10 score.

The head is 768-1024-128-64-16-1 with dropout between the first layers and no nonlinearity
(as released); its state-dict keys are ``layers.{0,2,4,6,7}.{weight,bias}``. The CLIP is
OpenAI's ViT-L/14, loaded through open_clip (``model_name=ViT-L-14`` + a local checkpoint, or
an open_clip folder). The head file may be ``.safetensors`` or the released ``.pth``, read
with ``torch.load(weights_only=True)`` (tensors only, no code is unpickled).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from alignkit.rewards.clip import ClipModel, load_clip
from alignkit.rewards.registry import REWARDS

HIDDEN_SIZES = (1024, 128, 64, 16)
DROPOUTS = (0.2, 0.2, 0.1)


class AestheticHead(nn.Module):
    """The released MLP (``input_dim`` 768 for ViT-L/14); dropout is inactive in eval mode."""

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        sizes = (input_dim, *HIDDEN_SIZES)
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if index < len(DROPOUTS):
                layers.append(nn.Dropout(DROPOUTS[index]))
        layers.append(nn.Linear(HIDDEN_SIZES[-1], 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)

    @classmethod
    def load(cls, path: str | Path) -> AestheticHead:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"aesthetic head {path} does not exist; pass reward.head=<local "
                "sac+logos+ava1-l14-linearMSE.pth or .safetensors> (nothing is downloaded here)"
            )
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        head = cls(int(state["layers.0.weight"].shape[1]))
        head.load_state_dict(state)
        return head


class AestheticReward:
    """``head(normalise(clip_image_embedding))`` ``[B]``; prompts are ignored."""

    differentiable = True

    def __init__(self, clip: ClipModel, head: AestheticHead) -> None:
        width = clip.model_cfg["embed_dim"]
        if head.layers[0].in_features != width:
            raise ValueError(
                f"aesthetic head takes {head.layers[0].in_features}-d embeddings but the CLIP "
                f"gives {width}-d; use the CLIP the head was trained on (ViT-L/14: 768)"
            )
        self.clip = clip.eval().requires_grad_(False)
        self.head = head.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.clip.to(images.device)
        self.head.to(images.device)
        return self.head(self.clip.image_features(images).float())


@REWARDS.register("aesthetic")
def aesthetic(
    head: str | Path | None = None,
    path: str | Path | None = None,
    model_name: str | None = "ViT-L-14-quickgelu",
    checkpoint: str | Path | None = None,
) -> AestheticReward:
    """The head file plus CLIP ViT-L/14 (``checkpoint``, or an open_clip folder ``path``)."""
    if head is None:
        raise ValueError(
            "reward=aesthetic needs reward.head=<sac+logos+ava1-l14-linearMSE.pth> and the "
            "CLIP ViT-L/14 weights (reward.checkpoint=<file> or reward.path=<open_clip folder>)"
        )
    name = None if path is not None else model_name
    clip = load_clip("reward=aesthetic", path, name, checkpoint)
    return AestheticReward(clip, AestheticHead.load(head))
