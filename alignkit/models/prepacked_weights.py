"""Convolution and linear weights reordered once per sampling loop, not once per call (CPU).

Eager PyTorch hands oneDNN each weight in PyTorch's plain layout, and oneDNN reorders it into
its blocked layout on every call (MKL likewise repacks a linear layer's weight for every
product). At small sizes (a 64 px image is an 8x8 latent, 2x2 and 1x1 at the UNet's
bottom) that costs as much as the arithmetic itself. A sampling loop calls the same
frozen weights at the same shapes many times, so each weight is reordered once per input
shape and kept: what inductor's freezing pass does, without its minutes of compilation. A
LoRA layer becomes one product with ``W + scale B A`` packed, while its adapter is on. A
convolution over a 2x2 or 1x1 map becomes one product with its dense matrix
(``alignkit/models/convolution_matrix.py``), where oneDNN's convolution runs at half speed.
Results equal the plain layers' up to float rounding (tests/test_sampling_speedups.py).

Anything else takes the layer's own forward: gradients (DRTune's rollouts), tracing by
torch.compile, other devices or dtypes, sharded weights, padding modes other than zeros,
LoRA variants (DoRA, a LoRA bias, active dropout) and merged adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from peft.tuners.lora import Linear as LoRALinear

from alignkit.models.convolution_matrix import convolution_matrix, dense_is_cheaper, output_size
from alignkit.models.forward_overrides import forwards_wrapped

Packed = TypeVar("Packed")


def prepacking_available() -> bool:
    """Whether this torch build has oneDNN's convolution and linear on prepacked weights."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_convolution_pointwise")
        and hasattr(ops, "_linear_pointwise")
    )


def _plain_cpu_float32(module: torch.nn.Module) -> bool:
    return all(
        type(p.data) is torch.Tensor  # a sharded (DTensor) weight is not
        and p.device.type == "cpu"
        and p.dtype == torch.float32
        for p in module.parameters()
    )


def _packable(module: torch.nn.Module) -> bool:
    if isinstance(module, LoRALinear):
        return type(module.get_base_layer()) is torch.nn.Linear and _plain_cpu_float32(module)
    if isinstance(module, torch.nn.Conv2d):
        plain_padding = module.padding_mode == "zeros" and not isinstance(module.padding, str)
        return plain_padding and _plain_cpu_float32(module)
    return type(module) is torch.nn.Linear and _plain_cpu_float32(module)


def plain_cpu_inference(x: torch.Tensor) -> bool:
    """A float32 CPU call without gradients, outside torch.compile's tracing: the calls the
    sampling speedups take over."""
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and x.dtype == torch.float32
        and x.device.type == "cpu"
    )


class _PackedCopies:
    """A layer's reordered weights by key, all dropped once one of its parameters changes in
    place (an optimizer step bumps the version counter)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.parameters = list(layer.parameters())
        self.copies: dict[Hashable, object] = {}
        self.versions = self._versions()

    def _versions(self) -> list[int]:
        return [p._version for p in self.parameters]

    def get(self, key: Hashable, pack: Callable[[], Packed]) -> Packed:
        versions = self._versions()
        if versions != self.versions:
            self.copies.clear()
            self.versions = versions
        if key not in self.copies:
            self.copies[key] = pack()
        return self.copies[key]  # type: ignore[return-value]


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _pack_linear(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), x.numel() // x.shape[-1])


class _PrepackedConvolution:
    def __init__(self, conv: torch.nn.Conv2d, forward: Callable[..., object]) -> None:
        self.conv, self.forward = conv, forward
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.packed = _PackedCopies(conv)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        laid_out = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        if x.dim() != 4 or not laid_out or not plain_cpu_inference(x):
            return self.forward(x)
        conv = self.conv
        if conv.groups == 1 and dense_is_cheaper(tuple(x.shape[2:]), conv.kernel_size):
            return self._as_matrix(x)
        weight = self.packed.get(
            tuple(x.shape),
            lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
                conv.weight.detach().to_mkldnn(), *self.geometry, list(x.shape)
            ),
        )
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, conv.bias, *self.geometry, "none", [], ""
        )

    def _as_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """A 2x2 or 1x1 map: one product with the convolution's dense matrix."""
        conv = self.conv
        batch, _, height, width = x.shape

        def pack() -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
            geometry = (conv.padding, conv.stride, conv.dilation)
            out_h, out_w = output_size((height, width), conv.kernel_size, *geometry)
            dense = convolution_matrix(conv.weight.detach(), (height, width), *geometry)
            bias = None if conv.bias is None else conv.bias.detach().repeat(out_h * out_w)
            return torch.ops.mkldnn._reorder_linear_weight(dense, batch), bias, out_h, out_w

        weight, bias, out_h, out_w = self.packed.get(("dense", *x.shape), pack)
        channels_last = x.permute(0, 2, 3, 1).reshape(batch, -1)
        out = _linear(channels_last, weight, bias)
        return out.view(batch, out_h, out_w, conv.out_channels).permute(0, 3, 1, 2)


class _PrepackedLinear:
    def __init__(self, linear: torch.nn.Linear, forward: Callable[..., object]) -> None:
        self.linear, self.forward = linear, forward
        self.packed = _PackedCopies(linear)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or not x.is_contiguous() or not plain_cpu_inference(x):
            return self.forward(x)
        linear = self.linear
        rows = x.numel() // x.shape[-1]
        weight = self.packed.get(rows, lambda: _pack_linear(linear.weight, x))
        return _linear(x, weight, linear.bias)


class _PrepackedLoRALinear:
    """A peft LoRA linear layer as one product: with ``W + sum_a scale_a B_a A_a`` packed
    while its adapters are on, with ``W`` while they are off."""

    def __init__(self, layer: LoRALinear, forward: Callable[..., object]) -> None:
        self.layer, self.forward = layer, forward
        self.packed = _PackedCopies(layer)

    def _adapters(self) -> tuple[str, ...] | None:
        """The active vanilla adapters, or None where one product cannot stand in."""
        layer = self.layer
        if layer.merged:
            return None
        if layer.disable_adapters:
            return ()
        names = tuple(name for name in layer.active_adapters if name in layer.lora_A)
        for name in names:
            dropout = layer.lora_dropout[name]
            dropping = dropout.training and getattr(dropout, "p", 0.0) > 0
            if name in layer.lora_variant or layer.lora_bias[name] or dropping:
                return None
        return names

    def _merged_weight(self, names: tuple[str, ...]) -> torch.Tensor:
        layer = self.layer
        weight = layer.get_base_layer().weight.detach()
        for name in names:
            weight = weight + layer.get_delta_weight(name).detach()
        return weight

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        names = self._adapters()
        plain_call = not args and not kwargs and x.dim() >= 2 and x.is_contiguous()
        if names is None or not plain_call or not plain_cpu_inference(x):
            return self.forward(x, *args, **kwargs)
        rows = x.numel() // x.shape[-1]
        weight = self.packed.get(
            (names, rows),
            lambda: _pack_linear(self._merged_weight(names), x),
        )
        return _linear(x, weight, self.layer.get_base_layer().bias)


def _prepacked(module: torch.nn.Module, forward: Callable[..., object]) -> Callable[..., object]:
    if isinstance(module, LoRALinear):
        return _PrepackedLoRALinear(module, forward)
    if isinstance(module, torch.nn.Conv2d):
        return _PrepackedConvolution(module, forward)
    return _PrepackedLinear(module, forward)


@contextmanager
def prepacked_weights(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Every plain-CPU float32 ``Conv2d``, ``Linear`` and LoRA linear layer inside ``modules``
    reuses its reordered weight for the duration; the copies go on exit."""
    if not prepacking_available():
        yield
        return
    layers = {id(m): m for module in modules for m in module.modules() if _packable(m)}
    with forwards_wrapped(list(layers.values()), _prepacked):
        yield
