"""``trainer.compile``: the trained UNet's forward through ``torch.compile``.

Only the training forward (``Backbone.unet_forward``) is compiled; the module, its
parameters, checkpoints and ``final/`` stay those of the plain UNet. The first steps pay the
compilation (minutes on a small CPU), later ones run the compiled graphs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

_COMPILED: weakref.WeakSet = weakref.WeakSet()


def compiled(module: torch.nn.Module, backend: str) -> Callable[..., object]:
    """``torch.compile(module, backend=backend)``, with an unknown backend named up front."""
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(
            f"unknown trainer.compile_backend={backend!r}; choose one of {', '.join(known)} "
            "(inductor is torch.compile's default)"
        )
    forward = torch.compile(module, backend=backend)
    _COMPILED.add(forward)
    return forward


def is_compiled(forward: Callable[..., object]) -> bool:
    """Whether ``forward`` came from ``compiled``: code that changes the module's layers for
    a while (the sampling speedups) keeps off it, since torch.compile would recompile."""
    return forward in _COMPILED
