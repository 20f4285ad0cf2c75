"""Swap a module's ``forward`` for the duration of a block, leaving its class and state alone.

The sampling speedups (``prepacked_weights``, ``reused_text_key_values``) route a layer's
call through a wrapper while a sampling loop runs. Setting ``forward`` on the instance keeps
the module tree, the state dict and every other caller untouched, and restoring it puts back
whatever instance-level ``forward`` was there before (accelerate's hooks set one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

#: ``(module, its current forward) -> the forward to use for the duration``.
ForwardWrapper = Callable[[torch.nn.Module, Callable[..., object]], Callable[..., object]]


@contextmanager
def forwards_wrapped(modules: list[torch.nn.Module], wrap: ForwardWrapper) -> Iterator[None]:
    """Call ``wrap(module, module.forward)`` for each module instead of its forward."""
    saved = [(module, module.__dict__.get("forward")) for module in modules]
    for module in modules:
        module.forward = wrap(module, module.forward)
    try:
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
