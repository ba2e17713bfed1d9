"""deform_conv2d on the CPU: Numba sampling into bounded column tiles + one GEMM per tile.

Per tile of images × output rows, the kernel samples the channels-last input into
``columns (nb, rows, Wout, kh*kw, Cin)``: read as the channels-last image
``(nb, Cin, rows, Wout*kh*kw)``, each output pixel owns a 1×(kh*kw) patch holding its
samples, so the GEMM with the weight viewed as ``(Cout, Cin/groups, 1, kh*kw)`` is a
grouped convolution with stride (1, kh*kw) over the columns. torch runs it with oneDNN (as
fast as its dense conv2d on any x86 vendor, where MKL's GEMM is not), and the backward
returns the weight gradient in its layout. Where oneDNN's inner
product is faster (``_use_matmul``), the forward GEMM runs as one instead: its result
``(Cout, pixels)`` is already the output's NCHW layout. The column buffer never exceeds
``WORKSPACE_BYTES`` (two buffers in the backward).
"""

from __future__ import annotations

import numba
import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import Tile, tiles, workspace
from . import deform_conv_kernels as kernels

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation


class _TileData:
    """The tensors a kernel call needs for one tile, as contiguous slices."""

    def __init__(self, tile: Tile, x_cl: Tensor, offset: Tensor, mask: Tensor | None) -> None:
        rows = slice(tile.y0, tile.y1)
        self.x = x_cl.numpy()
        self.offset = offset[tile.n0 : tile.n1, :, rows].contiguous()
        self.has_mask = mask is not None
        if mask is None:
            self.mask = offset.new_ones(1, 1, 1, 1)
        else:
            self.mask = mask[tile.n0 : tile.n1, :, rows].contiguous()


def _channels_last(input: Tensor, tile: Tile, cache: dict) -> Tensor:
    """``input[n0:n1]`` as (nb, H, W, C), reused across the row bands of one image."""
    key = (tile.n0, tile.n1)
    if cache.get("key") != key:
        cache["key"] = key
        cache["value"] = input[tile.n0 : tile.n1].permute(0, 2, 3, 1).contiguous()
    return cache["value"]


def _columns_shape(data: _TileData, kh: int, kw: int) -> tuple[int, ...]:
    """(nb, rows, Wout, kh*kw, Cin) of the tile's columns."""
    nb, _, rows, wout = data.offset.shape
    return nb, rows, wout, kh * kw, data.x.shape[3]


def _weight_channels_last(weight: Tensor) -> Tensor:
    """(Cout, Cin/groups, kh, kw) copied as (Cout, kh, kw, Cin/groups) into the weight slot."""
    cout, cin_g, kh, kw = weight.shape
    weight_cl = workspace((cout, kh, kw, cin_g), weight.dtype, slot="weight")
    weight_cl.copy_(weight.permute(0, 2, 3, 1))
    return weight_cl


def _use_matmul(input: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether the forward GEMM runs as oneDNN's inner product (``_ColumnsMatmul``).

    It needs float32, one group and a oneDNN build. Its extra cost, packing the columns,
    pays off against the output transpose and weight reorder it saves when Cout is wide:
    for Cout >= Cin or Cout >= 256 it was faster in every shape measured (res5: 27.9 vs
    28.9 ms), for Cout = 64..128 with Cin = 256 on 56×56 images 10-20 % slower.
    """
    cout, cin = weight.shape[0], input.shape[1]
    return (
        input.dtype == torch.float32
        and groups == 1
        and (cout >= cin or cout >= 256)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class _ColumnsMatmul:
    """The forward GEMM as oneDNN's inner product (the op behind torch's CPU linear fusion).

    ``(Cout, kk*Cin) · (pixels, kk*Cin)ᵀ`` reads the columns in their layout and the weight
    as its channels-last copy, reorders neither, and writes ``(Cout, pixels)``: for one
    image that is the NCHW output itself.
    """

    def __init__(self, weight: Tensor) -> None:
        self.weight = _weight_channels_last(weight).view(weight.shape[0], -1)

    def forward(self, columns: Tensor, bias: Tensor | None) -> Tensor:
        """(nb, Cout, rows, Wout) as a view of a (Cout, nb, rows, Wout) tensor."""
        nb, rows, wout, kk, cin = columns.shape
        result = torch.ops.mkldnn._linear_pointwise(
            self.weight, columns.view(-1, kk * cin), None, "none", [], "")
        if bias is not None:
            result += bias.view(-1, 1)
        return result.view(-1, nb, rows, wout).transpose(0, 1)


class _ColumnsConv:
    """The GEMM of column tiles with the weight, as a convolution over the columns.

    Both forms read the weight from one channels-last copy ``(Cout, kh, kw, Cin/groups)``
    kept in a reusable workspace slot (oneDNN wants that layout; a fresh copy per call
    costs page faults in its reorder, ≈ 2 vs 0.7 ms at res5). Strided form (any groups): the
    columns read as the channels-last image ``(nb, Cin, rows, Wout*kk)``, the weight as
    ``(Cout, Cin/groups, 1, kk)``, stride ``(1, kk)``. 1×1 form (groups == 1 only: its
    channel axis mixes kernel points and channels, which groups would split wrongly): the
    image ``(nb, kk*Cin, rows, Wout)``, the weight as ``(Cout, kk*Cin, 1, 1)``. oneDNN runs
    the strided forward faster and the 1×1 backward faster (weight gradient of a res5
    tile: 17 vs 98 ms).
    """

    def __init__(self, weight: Tensor, groups: int, one_by_one: bool) -> None:
        cout, cin_g, kh, kw = weight.shape
        self.weight_shape = weight.shape
        self.groups = groups
        self.one_by_one = one_by_one and groups == 1
        weight_cl = _weight_channels_last(weight)
        if self.one_by_one:
            self.weight = weight_cl.view(cout, kh * kw * cin_g, 1, 1)
            self.stride = [1, 1]
        else:
            self.weight = weight_cl.view(cout, 1, kh * kw, cin_g).permute(0, 3, 1, 2)
            self.stride = [1, kh * kw]

    def image(self, columns: Tensor) -> Tensor:
        """Columns (nb, rows, Wout, kk, Cin) as the form's channels-last image (a view)."""
        nb, rows, wout, kk, cin = columns.shape
        if self.one_by_one:
            return columns.view(nb, rows, wout, kk * cin).permute(0, 3, 1, 2)
        return columns.view(nb, rows, wout * kk, cin).permute(0, 3, 1, 2)

    def forward(self, columns: Tensor, bias: Tensor | None) -> Tensor:
        """(nb, Cout, rows, Wout), channels-last."""
        return F.conv2d(self.image(columns), self.weight, bias, self.stride, groups=self.groups)

    def backward(self, grad_out: Tensor, columns: Tensor, need_columns: bool,
                 need_weight: bool) -> tuple[Tensor | None, Tensor | None]:
        """Gradients of the columns (their layout) and of the weight (its layout).

        Without ``need_weight``, ``columns`` is read for its shape only.
        """
        grad_image, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, self.image(columns), self.weight, None, self.stride, [0, 0], [1, 1], False,
            [0, 0], self.groups, [need_columns, need_weight, False],
        )
        grad_columns = None
        if need_columns:
            grad_columns = grad_image.permute(0, 2, 3, 1).contiguous().view(columns.shape)
        if need_weight and self.one_by_one:
            cout, cin_g, kh, kw = self.weight_shape
            grad_w = grad_w.view(cout, kh, kw, cin_g).permute(0, 3, 1, 2)
        elif need_weight:
            grad_w = grad_w.reshape(self.weight_shape)
        return grad_columns, grad_w


def _sample(data: _TileData, tile: Tile, kh: int, kw: int, geometry: Geometry) -> Tensor:
    columns = workspace(_columns_shape(data, kh, kw), data.offset.dtype)
    kernels.sample_columns(
        data.x, data.offset.numpy(), data.mask.numpy(), data.has_mask, columns.numpy(),
        tile.y0, kw, *geometry,
    )
    return columns


def _store(out: Tensor, tile: Tile, result: Tensor) -> None:
    """Write a tile result (nb, Cout, rows, Wout) into ``out`` (N, Cout, H, W)."""
    channels_last = result.shape[1] > 1 and result.stride(1) == 1
    if channels_last and tile.y0 == 0 and tile.y1 == out.shape[2]:
        # Whole images: as 2-D (Cout, H*W) <- (H*W, Cout).t() copies, torch's blocked
        # transpose runs about twice as fast as the 4-D strided copy.
        cout = out.shape[1]
        for i, image in enumerate(result.permute(0, 2, 3, 1)):
            out[tile.n0 + i].view(cout, -1).copy_(image.reshape(-1, cout).t())
    else:
        out[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = result


def forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
            mask: Tensor | None, geometry: Geometry) -> Tensor:
    """(N, Cin, H, W) -> (N, Cout, Hout, Wout); arguments already checked."""
    n, cin = input.shape[:2]
    cout, cin_g, kh, kw = weight.shape
    groups = cin // cin_g
    hout, wout = offset.shape[2:]
    row_bytes = wout * kh * kw * cin * input.element_size()
    plan = list(tiles(n, hout, row_bytes))
    gemm: _ColumnsMatmul | _ColumnsConv
    if _use_matmul(input, weight, groups):
        gemm = _ColumnsMatmul(weight)
    else:
        gemm = _ColumnsConv(weight, groups, one_by_one=False)
    out = input.new_empty(n, cout, hout, wout)  # untouched (no page faults) if unused
    cache: dict = {}
    for tile in plan:
        data = _TileData(tile, _channels_last(input, tile, cache), offset, mask)
        columns = _sample(data, tile, kh, kw, geometry)
        if tile.y1 == hout:  # the tile's images are sampled: free their copy before the GEMM
            del data
            cache.clear()
        result = gemm.forward(columns, bias)
        if len(plan) == 1 and result.is_contiguous():
            return result  # the whole output, already in its layout
        _store(out, tile, result)
    return out


def backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
             mask: Tensor | None, geometry: Geometry, need_input: bool, need_offset_mask: bool,
             need_weight: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, offset, weight, mask); a gradient not needed comes back as zeros.

    ``grad_mask`` is an empty tensor when ``mask`` is None.
    """
    n, cin = input.shape[:2]
    _, cin_g, kh, kw = weight.shape
    groups = cin // cin_g
    hout, wout = offset.shape[2:]
    grad_input = torch.zeros_like(input)
    grad_offset = torch.zeros_like(offset)
    grad_mask = torch.zeros_like(mask) if mask is not None else offset.new_empty(0)
    grad_weight = torch.zeros_like(weight)
    need_columns_grad = need_input or need_offset_mask
    if not (need_columns_grad or need_weight):
        return grad_input, grad_offset, grad_weight, grad_mask
    gemm = _ColumnsConv(weight, groups, one_by_one=True)
    buffers = int(need_weight) + int(need_columns_grad)
    row_bytes = buffers * wout * kh * kw * cin * input.element_size()
    cache: dict = {}
    grad_x_cl = None
    for tile in tiles(n, hout, row_bytes):
        x_cl = _channels_last(input, tile, cache)
        data = _TileData(tile, x_cl, offset, mask)
        go = grad_out[tile.n0 : tile.n1, :, tile.y0 : tile.y1].contiguous(
            memory_format=torch.channels_last)
        if need_weight:
            columns = _sample(data, tile, kh, kw, geometry)
        else:  # the conv backward reads only the shape of its input for grad_input
            columns = data.offset.new_empty(_columns_shape(data, kh, kw))
        grad_columns, grad_w_tile = gemm.backward(go, columns, need_columns_grad, need_weight)
        del columns
        if need_weight:
            grad_weight += grad_w_tile
        if not need_columns_grad:
            continue
        args = (tile.y0, kw, *geometry)
        if need_offset_mask:
            grad_off_tile = torch.empty_like(data.offset)
            grad_mask_tile = torch.empty_like(data.mask)
            kernels.offset_mask_grad(
                data.x, data.offset.numpy(), data.mask.numpy(), data.has_mask,
                grad_columns.numpy(), grad_off_tile.numpy(), grad_mask_tile.numpy(), *args,
            )
            grad_offset[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = grad_off_tile
            if mask is not None:
                grad_mask[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = grad_mask_tile
        if need_input:
            if tile.y0 == 0:
                grad_x_cl = torch.zeros_like(x_cl)
            kernels.input_grad(
                tuple(x_cl.shape), data.offset.numpy(), data.mask.numpy(), data.has_mask,
                grad_columns.numpy(), grad_x_cl.numpy(), min(cin, numba.get_num_threads()),
                *args,
            )
            if tile.y1 == hout:
                grad_input[tile.n0 : tile.n1] = grad_x_cl.permute(0, 3, 1, 2)
    return grad_input, grad_offset, grad_weight, grad_mask
