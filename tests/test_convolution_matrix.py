"""A convolution over a tiny map as its dense matrix (``alignkit.models.convolution_matrix``)."""

from __future__ import annotations

import pytest
import torch

from alignkit.models.convolution_matrix import convolution_matrix, dense_is_cheaper, output_size


def test_the_matrix_of_a_3x3_kernel_over_a_2x2_map_by_hand():
    weight = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # taps 1..9, centre 5
    matrix = convolution_matrix(weight, (2, 2), (1, 1), (1, 1), (1, 1))
    # output pixel (oh, ow) reads input (ih, iw) through tap (ih - oh + 1, iw - ow + 1)
    expected = torch.tensor(
        [
            [5.0, 6.0, 8.0, 9.0],
            [4.0, 5.0, 7.0, 8.0],
            [2.0, 3.0, 5.0, 6.0],
            [1.0, 2.0, 4.0, 5.0],
        ]
    )
    torch.testing.assert_close(matrix, expected)


@pytest.mark.parametrize(
    ("in_size", "kernel", "padding", "stride", "dilation"),
    [
        ((2, 2), 3, 1, 1, 1),
        ((1, 1), 3, 1, 1, 1),
        ((2, 2), 3, 1, 2, 1),
        ((2, 1), (3, 1), (1, 0), 1, 1),
        ((2, 2), 3, 2, 1, 2),
        ((1, 1), 1, 0, 1, 1),
        ((3, 3), 3, 0, 1, 1),
    ],
    ids=["2x2", "1x1", "strided", "uneven", "dilated", "pointwise", "unpadded"],
)
def test_the_matrix_times_channels_last_pixels_is_the_convolution(
    in_size, kernel, padding, stride, dilation
):
    conv = torch.nn.Conv2d(5, 7, kernel, padding=padding, stride=stride, dilation=dilation)
    x = torch.randn(3, 5, *in_size)
    with torch.no_grad():
        expected = conv(x)
        matrix = convolution_matrix(conv.weight, in_size, conv.padding, conv.stride, conv.dilation)
    out_h, out_w = output_size(in_size, conv.kernel_size, conv.padding, conv.stride, conv.dilation)
    assert (out_h, out_w) == tuple(expected.shape[2:])
    flat = x.permute(0, 2, 3, 1).reshape(3, -1) @ matrix.T
    got = flat.view(3, out_h, out_w, 7).permute(0, 3, 1, 2) + conv.bias.detach()[:, None, None]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dense_is_used_only_where_it_does_no_more_work_than_the_kernel():
    assert dense_is_cheaper((2, 2), (3, 3)) and dense_is_cheaper((1, 1), (3, 3))
    assert dense_is_cheaper((3, 3), (3, 3)) and dense_is_cheaper((1, 1), (1, 1))
    assert not dense_is_cheaper((4, 4), (3, 3)) and not dense_is_cheaper((2, 2), (1, 1))
