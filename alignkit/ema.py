"""An exponential moving average (EMA) of the trainable weights (``trainer.ema``).

The average is kept in float32 beside the weights it follows, keyed by parameter name, so it
goes into a checkpoint as it is and a resumed run continues it exactly. After training, the
average replaces the weights that the evaluation and ``final/`` read: an EMA smooths out the
last steps' noise, which is why diffusion training scripts commonly export it.
"""

from __future__ import annotations

import torch

#: The ramp's shape: the n-th update (n = 0, 1, ...) uses decay (1 + n) / (RAMP + n) at most,
#: so the first updates do not hold on to the starting weights (diffusers' EMAModel default).
RAMP = 10


def decay_at(update: int, decay: float) -> float:
    """The decay of the ``update``-th update (0-based): the ramp, capped at ``decay``."""
    return min(decay, (1 + update) / (RAMP + update))


def trainable_named_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def check_decay(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(
            f"trainer.ema_decay={decay!r} must be in [0, 1): e.g. 0.999 averages over about "
            "the last 1000 steps"
        )


class WeightEMA:
    """The moving average of ``module``'s trainable parameters, updated once per step."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        check_decay(decay)
        self.module = module
        self.decay = decay
        self.params = trainable_named_parameters(module)
        self.averages = {name: p.detach().clone().float() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Blend the current weights in after optimizer step ``step`` (0-based)."""
        weight = 1.0 - decay_at(step, self.decay)
        averages = list(self.averages.values())
        current = [self.params[name].detach().float() for name in self.averages]
        torch._foreach_lerp_(averages, current, weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu().clone() for name, value in self.averages.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.averages.keys():
            raise ValueError(
                "the checkpoint's EMA does not match this model's trainable weights: resume "
                "with the run's model settings, or pass a new output_dir=... to start afresh"
            )
        for name, value in state.items():
            self.averages[name].copy_(value)

    def copy_to_weights(self) -> None:
        """Overwrite the trainable weights with the average (the end of training)."""
        copy_average_into(self.module, self.averages)


@torch.no_grad()
def copy_average_into(module: torch.nn.Module, averages: dict[str, torch.Tensor]) -> None:
    """Load saved averages into ``module``'s trainable parameters of the same names."""
    params = trainable_named_parameters(module)
    if params.keys() != averages.keys():
        missing = sorted(params.keys() - averages.keys())[:3]
        extra = sorted(averages.keys() - params.keys())[:3]
        raise ValueError(
            f"the EMA weights do not match the model (missing {missing}, unexpected {extra}): "
            "evaluate with the run's own model settings"
        )
    for name, param in params.items():
        param.copy_(averages[name])
