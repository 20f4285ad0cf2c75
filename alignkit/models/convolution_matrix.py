"""A convolution over a tiny image written out as the one matrix it is.

At the bottom of a UNet sampling 64 px images the feature maps are 2x2 and 1x1. There a 3x3
convolution touches every input pixel from every output pixel, and oneDNN's convolution
kernels run at under half their usual rate (their blocking assumes larger maps). Written as a
dense ``[Ho*Wo*C_out, H*W*C_in]`` matrix the same map is one well-shaped matrix product that
does no more multiply-adds than the convolution's own kernel does (``H*W <= kh*kw``).
"""

from __future__ import annotations

import torch


def output_size(
    in_size: tuple[int, int],
    kernel_size: tuple[int, int],
    padding: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """The spatial size a zero-padded ``Conv2d`` produces from ``in_size``."""
    return tuple(  # type: ignore[return-value]
        (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
        for size, kernel, pad, step, dil in zip(in_size, kernel_size, padding, stride, dilation)
    )


def dense_is_cheaper(in_size: tuple[int, int], kernel_size: tuple[int, int]) -> bool:
    """Whether the dense matrix needs no more multiply-adds per output pixel than the
    kernel: every output pixel reads all ``H*W`` inputs instead of ``kh*kw`` taps."""
    return in_size[0] * in_size[1] <= kernel_size[0] * kernel_size[1]


def convolution_matrix(
    weight: torch.Tensor,
    in_size: tuple[int, int],
    padding: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """``weight [C_out, C_in, kh, kw]`` of an ungrouped, zero-padded convolution over
    ``in_size`` -> ``[Ho*Wo*C_out, H*W*C_in]``, rows ordered ``(oh, ow, c_out)`` and columns
    ``(ih, iw, c_in)``: channels-last on both sides, so a channels-last input is multiplied
    without a copy. Taps that land in the padding contribute nothing."""
    c_out, c_in, kh, kw = weight.shape
    height, width = in_size
    out_h, out_w = output_size(in_size, (kh, kw), padding, stride, dilation)
    dense = weight.new_zeros(out_h, out_w, c_out, height, width, c_in)
    for oh in range(out_h):
        for ow in range(out_w):
            for a in range(kh):
                ih = oh * stride[0] - padding[0] + a * dilation[0]
                if not 0 <= ih < height:
                    continue
                for b in range(kw):
                    iw = ow * stride[1] - padding[1] + b * dilation[1]
                    if 0 <= iw < width:
                        dense[oh, ow, :, ih, iw, :] = weight[:, :, a, b]
    return dense.reshape(out_h * out_w * c_out, height * width * c_in)
