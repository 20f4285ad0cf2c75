"""``python -m alignkit.bench_drtune``: reward-backpropagation memory at T = 10 vs T = 40.

DRTune's claim: with a stop-gradient on every UNet input and checkpointed training calls,
the memory held for backward grows with K (training steps), not with T (sampling steps).
Side by side in one process, on the same tiny_sd model, prompts and noise, for each variant
and each T, one rollout -> differentiable decode -> reward -> backward:

- ``drtune``: K = 3 equally spaced training calls, inputs detached, checkpointed;
- ``draft_k``: the last K = 3 calls with the full Jacobian, checkpointed (AlignProp/DRaFT);
- ``drtune_no_ckpt``: DRTune's plan without checkpointing (K calls' activations are kept);
- ``full_backprop``: every call with grad, nothing detached, no checkpointing (the baseline).

Memory is measured with torch's saved-tensor hooks: the bytes of distinct tensor storages
autograd keeps for backward after the forward pass (what grows with the graph). Inside a
checkpointed call, torch.utils.checkpoint's own hooks take over and store nothing, so the
count is exactly what a checkpointed rollout keeps; the transient recomputation of one UNet
call during backward is the same for every T and is not counted. On a GPU, the CUDA
allocator's peak is reported as well.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.autograd.graph import saved_tensors_hooks

from alignkit.config import ModelConfig
from alignkit.models import build_backbone
from alignkit.rewards import build_reward
from alignkit.rollout import RolloutPlan, rollout

PROMPTS = ["a red circle", "a blue square"]
K = 3


class SavedBytes:
    """Counts distinct storages saved for backward while active (a saved-tensor hook)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def plan_for(variant: str, steps: int) -> RolloutPlan:
    if variant in ("drtune", "drtune_no_ckpt"):
        stride = steps // K
        return RolloutPlan(steps, steps, tuple(i * stride for i in range(K)), detach_inputs=True)
    if variant == "draft_k":
        return RolloutPlan(steps, steps, tuple(range(steps - K, steps)), detach_inputs=False)
    if variant == "full_backprop":
        return RolloutPlan(steps, steps, tuple(range(steps)), detach_inputs=False)
    raise ValueError(f"unknown variant {variant!r}")


def measure(backbone, variant: str, steps: int, reward) -> dict[str, float]:
    """One rollout + reward + backward; bytes saved for backward, seconds, CUDA peak."""
    checkpointed = variant in ("drtune", "draft_k")
    noise = torch.randn((len(PROMPTS), 4, 8, 8), generator=torch.Generator().manual_seed(0))
    counter = SavedBytes()
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backbone.device)
    started = time.perf_counter()
    with saved_tensors_hooks(counter.pack, lambda tensor: tensor):
        result = rollout(
            backbone, PROMPTS, noise, plan_for(variant, steps), 3.0, use_checkpoint=checkpointed
        )
        images = backbone.decode_latents_with_grad(result.latents)
        loss = -reward(images, result.prompts).mean()
    loss.backward()
    backbone.unet.zero_grad(set_to_none=True)
    out = {"saved_mb": counter.total / 2**20, "seconds": time.perf_counter() - started}
    if backbone.device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(backbone.device) / 2**20
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs=2, default=[10, 40], metavar=("T1", "T2"))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny_sd", family="sd", init="random", resolution=args.resolution)
    backbone = build_backbone(cfg, args.device)
    reward = build_reward("symmetry")
    small, large = args.steps
    results: dict = {"device": args.device, "K": K, "steps": args.steps, "variants": {}}
    for variant in ("drtune", "draft_k", "drtune_no_ckpt", "full_backprop"):
        at = {steps: measure(backbone, variant, steps, reward) for steps in (small, large)}
        entry = {f"T={steps}": values for steps, values in at.items()}
        entry["saved_ratio"] = at[large]["saved_mb"] / at[small]["saved_mb"]
        if "cuda_peak_mb" in at[small]:
            entry["cuda_peak_ratio"] = at[large]["cuda_peak_mb"] / at[small]["cuda_peak_mb"]
        results["variants"][variant] = entry
    print(json.dumps(results, indent=1))
    print(f"\n| variant | saved MB, T={small} | saved MB, T={large} | ratio |")
    print("|---|---|---|---|")
    for variant, entry in results["variants"].items():
        print(
            f"| {variant} | {entry[f'T={small}']['saved_mb']:.2f} | "
            f"{entry[f'T={large}']['saved_mb']:.2f} | {entry['saved_ratio']:.2f} |"
        )
    return results


if __name__ == "__main__":
    main()
