"""``trainer.compile``: the trained UNet's forward through ``torch.compile``.

Only the training forward (``Backbone.unet_forward``) is compiled; the module, its
parameters, checkpoints and ``final/`` stay those of the plain UNet. The first steps pay the
compilation (minutes on a small CPU), later ones run the compiled graphs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def compiled(module: torch.nn.Module, backend: str) -> Callable[..., object]:
    """``torch.compile(module, backend=backend)``, with an unknown backend named up front."""
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(
            f"unknown trainer.compile_backend={backend!r}; choose one of {', '.join(known)} "
            "(inductor is torch.compile's default)"
        )
    return torch.compile(module, backend=backend)
