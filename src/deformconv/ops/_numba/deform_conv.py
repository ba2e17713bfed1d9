"""deform_conv2d on the CPU: Numba sampling into bounded column tiles + one GEMM per tile.

Per tile of images × output rows, the kernel samples the channels-last input into
``columns (nb, rows, Wout, kh*kw, Cin)``. Forward: where oneDNN's inner product is faster
(``_use_matmul``), the GEMM runs as one: ``weight (Cout, kk*Cin) · columnsᵀ`` is already
the output's NCHW layout; otherwise the columns read as the channels-last image
``(nb, Cin, rows, Wout*kh*kw)`` and the GEMM with the weight viewed as
``(Cout, Cin/groups, 1, kh*kw)`` is a grouped convolution with stride (1, kh*kw)
(``_ColumnsConv``). Backward (``_BackwardGemm``): the columns' gradient from one GEMM, then
one kernel pass for the offset, mask and input gradients that also re-samples the columns
in the same buffer for the weight gradient's GEMM. The column buffer never exceeds
``WORKSPACE_BYTES``; it, the channels-last copy of an NCHW input (a channels-last input is
read in place) and the input gradient's scatter target live in reusable per-thread
workspace slots, so a call allocates little beyond its results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._workspace import Tile, tiles, workspace
from ..arguments import memory_format
from . import deform_conv_depthwise as depthwise
from . import deform_conv_kernels as kernels
from . import deform_conv_tiles as tile_ops
from .deform_conv_tiles import Geometry, TileData, grouped
from .threads import run_tasks


def _weight_channels_last(weight: Tensor) -> Tensor:
    """(Cout, Cin/groups, kh, kw) copied as (Cout, kh, kw, Cin/groups) into the weight slot.

    It is the columns' (kernel point, channel) order. oneDNN wants that layout too; a fresh
    copy per call would cost page faults in its weight reorder (benchmarks/README.md).
    """
    cout, cin_g, kh, kw = weight.shape
    weight_cl = workspace((cout, kh, kw, cin_g), weight.dtype, slot="weight")
    weight_cl.copy_(weight.permute(0, 2, 3, 1))
    return weight_cl


def _use_matmul(input: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether the forward GEMM runs as oneDNN's inner product (``_ColumnsMatmul``).

    It needs float32, one group and a oneDNN build. It packs the columns inside the GEMM,
    a cost in proportion to the columns, while the output transpose and weight reorder it
    saves grow with Cout: it wins from Cout = 256 on and loses, by 3-20 %, below
    (benchmarks/README.md).
    """
    return (
        input.dtype == torch.float32
        and groups == 1
        and weight.shape[0] >= 256
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
    """The GEMM of column tiles with the weight as a grouped convolution over the columns.

    The columns read as the channels-last image ``(nb, Cin, rows, Wout*kk)``, the weight
    (its channels-last copy) as ``(Cout, Cin/groups, 1, kk)``, stride ``(1, kk)``: oneDNN
    splits the conv groups, which one GEMM over the (kernel point, channel) axis cannot.
    """

    def __init__(self, weight: Tensor, groups: int) -> None:
        cout, cin_g, kh, kw = weight.shape
        self.weight_shape = weight.shape
        self.groups = groups
        weight_cl = _weight_channels_last(weight)
        self.weight = weight_cl.view(cout, 1, kh * kw, cin_g).permute(0, 3, 1, 2)
        self.stride = [1, kh * kw]

    @staticmethod
    def image(columns: Tensor) -> Tensor:
        """Columns (nb, rows, Wout, kk, Cin) as the channels-last image (a view)."""
        nb, rows, wout, kk, cin = columns.shape
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
            grad_out.contiguous(memory_format=torch.channels_last), self.image(columns),
            self.weight, None, self.stride, [0, 0], [1, 1], False, [0, 0], self.groups,
            [need_columns, need_weight, False],
        )
        grad_columns = None
        if need_columns:
            grad_columns = grad_image.permute(0, 2, 3, 1).contiguous().view(columns.shape)
        if need_weight:
            grad_w = grad_w.reshape(self.weight_shape)
        return grad_columns, grad_w


class _BackwardGemm:
    """The backward's GEMMs: columns gradient = output gradient · weight, and the weight
    gradient = Σ over pixels of output gradient ⊗ columns.

    With one group both are (batched) matmuls on the weight's channels-last copy
    ``(Cout, kk*Cin)``: the columns gradient lands in the reusable column workspace and the
    weight gradient accumulates tile by tile (one GEMM each: few torch calls, since each may
    wait for torch's threads) into one ``(Cout, kk*Cin)`` sum in the storage of the returned
    gradient, which is reordered in place at the end. No tile allocates. With conv groups
    they run as ``_ColumnsConv``'s backward.
    """

    def __init__(self, weight: Tensor, groups: int) -> None:
        self.weight_shape = weight.shape
        self.conv = _ColumnsConv(weight, groups) if groups > 1 else None
        self.weight = self.conv.weight if self.conv else _weight_channels_last(weight).view(
            weight.shape[0], -1)
        self.grad: Tensor | None = None

    def grad_columns(self, grad_out: Tensor, shape: tuple[int, ...]) -> Tensor:
        """The columns' gradient (nb, rows, Wout, kk, Cin) from the tile's ``grad_out``
        (nb, Cout, rows, Wout)."""
        if self.conv is not None:
            shape_only = grad_out.new_empty(shape)  # never written: costs no page faults
            return self.conv.backward(grad_out, shape_only, True, False)[0]
        nb, cout = grad_out.shape[:2]
        columns = workspace(shape, grad_out.dtype)
        torch.bmm(grad_out.reshape(nb, cout, -1).transpose(1, 2),
                  self.weight.expand(nb, -1, -1), out=columns.view(nb, -1, self.weight.shape[1]))
        return columns

    def accumulate_grad_weight(self, grad_out: Tensor, columns: Tensor) -> None:
        """Add the tile's weight gradient (``columns`` sampled, ``grad_out`` as above)."""
        if self.conv is not None:
            grad = self.conv.backward(grad_out, columns, False, True)[1]
            self.grad = grad if self.grad is None else self.grad.add_(grad)
            return
        if self.grad is None:
            self.grad = self.weight.new_zeros(self.weight.shape)
        nb, cout = grad_out.shape[:2]
        pixels_last = grad_out.permute(0, 2, 3, 1)
        if pixels_last.is_contiguous():  # channels-last: (pixels, Cout) as it is
            self.grad.addmm_(pixels_last.reshape(-1, cout).t(),
                             columns.view(-1, self.weight.shape[1]))
            return
        if nb > 1:  # one GEMM over all the tile's pixels: (Cout, nb*rows*Wout) first
            pixels = workspace((cout, nb, *grad_out.shape[2:]), grad_out.dtype, slot="grad_out")
            pixels.copy_(grad_out.transpose(0, 1))
            grad_out = pixels
        self.grad.addmm_(grad_out.reshape(cout, -1), columns.view(-1, self.weight.shape[1]))

    def grad_weight(self) -> Tensor:
        """The summed weight gradient, (Cout, Cin/groups, kh, kw) (zeros without tiles)."""
        if self.grad is None:
            return self.weight.new_zeros(self.weight_shape)
        if self.conv is not None:
            return self.grad.contiguous()
        return _to_channels_first(self.grad, self.weight_shape)


def _to_channels_first(grad: Tensor, shape: torch.Size, chunk_bytes: int = 1 << 20) -> Tensor:
    """``grad`` (Cout, kh*kw*Cin) reordered in place to (Cout, Cin, kh, kw), a few output
    channels at a time through a scratch copy of at most ``chunk_bytes`` (a full copy would
    be the largest allocation of a res5 backward after the columns)."""
    cout, cin_g, kh, kw = shape
    step = max(1, chunk_bytes // (grad[0].numel() * grad.element_size()))
    for start in range(0, cout, step):
        rows = grad[start : start + step]
        scratch = rows.clone()
        rows.view(-1, cin_g, kh * kw).copy_(scratch.view(-1, kh * kw, cin_g).transpose(1, 2))
    return grad.view(shape)


def _sample(data: TileData, tile: Tile, kw: int, geometry: Geometry) -> Tensor:
    columns = workspace(data.columns_shape(), data.offset.dtype)
    _, _, wout, kk, _ = columns.shape
    run_tasks(kernels.sample_columns, kernels.sample_tasks(data.x.shape, tile.y1 - tile.y0),
              columns.numel(), data.x, data.offset.numpy(), data.mask.numpy(), data.has_mask,
              grouped(columns, data.offset_groups), tile.y0, kw, *geometry,
              scratch=lambda: kernels.row_scratch(kk, wout, data.x.dtype))
    return columns


def _store(out: Tensor, tile: Tile, result: Tensor) -> None:
    """Write a tile result (nb, Cout, rows, Wout) into ``out`` (N, Cout, H, W)."""
    channels_last = result.shape[1] > 1 and result.stride(1) == 1
    if channels_last and tile.y0 == 0 and tile.y1 == out.shape[2]:
        tile_ops.store_channels_first(out[tile.n0 : tile.n1], result.permute(0, 2, 3, 1))
    else:
        out[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = result


def forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
            mask: Tensor | None, geometry: Geometry) -> Tensor:
    """(N, Cin, H, W) -> (N, Cout, Hout, Wout); arguments already checked."""
    if depthwise.applies(input, weight):
        return depthwise.forward(input, offset, weight, bias, mask, geometry)
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
        gemm = _ColumnsConv(weight, groups)
    layout = memory_format(input)
    # untouched (no page faults) if unused
    out = torch.empty((n, cout, hout, wout), dtype=input.dtype, memory_format=layout)
    cache: dict = {}
    for tile in plan:
        data = TileData(tile, tile_ops.channels_last(input, tile, cache), offset, mask, kh * kw)
        columns = _sample(data, tile, kw, geometry)
        result = gemm.forward(columns, bias)
        if len(plan) == 1 and result.is_contiguous(memory_format=layout):
            return result  # the whole output, already in its layout
        _store(out, tile, result)
    return out


def backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
             mask: Tensor | None, geometry: Geometry, need_input: bool, need_offset_mask: bool,
             need_weight: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, offset, weight, mask); a gradient not needed comes back as zeros.

    ``grad_mask`` is an empty tensor when ``mask`` is None.
    """
    if depthwise.applies(input, weight):
        return depthwise.backward(grad_out, input, offset, weight, mask, geometry, need_input,
                                  need_offset_mask, need_weight)
    n, cin = input.shape[:2]
    _, cin_g, kh, kw = weight.shape
    hout, wout = offset.shape[2:]
    need_columns_grad = need_input or need_offset_mask
    grad_input, grad_offset, grad_mask = tile_ops.gradient_outputs(
        input, offset, mask, need_input, need_offset_mask)
    if not (need_columns_grad or need_weight):
        return grad_input, grad_offset, torch.zeros_like(weight), grad_mask
    gemm = _BackwardGemm(weight, cin // cin_g)
    row_bytes = wout * kh * kw * cin * input.element_size()
    cache: dict = {}
    grad_x = input.new_empty(0)
    for tile in tiles(n, hout, row_bytes):
        x_cl = tile_ops.channels_last(input, tile, cache)
        data = TileData(tile, x_cl, offset, mask, kh * kw)
        grad_out_tile = grad_out[tile.n0 : tile.n1, :, tile.y0 : tile.y1]
        if need_columns_grad:
            columns = gemm.grad_columns(grad_out_tile, data.columns_shape())
            blocks = tile_ops.channel_blocks(tile.n1 - tile.n0, data.x.shape[4], columns.numel())
            grads = tile_ops.TileGradients(tile, x_cl, grad_x, grad_input, grad_offset,
                                           None if mask is None else grad_mask, blocks,
                                           need_input)
            groups = data.offset_groups
            run_tasks(
                kernels.backward_tile, (tile.n1 - tile.n0) * blocks, columns.numel(), data.x,
                data.offset.numpy(), data.mask.numpy(), data.has_mask,
                grouped(columns, groups), grads.offset_parts.numpy(), grads.mask_parts.numpy(),
                grouped(grads.grad_x, groups), blocks, need_offset_mask, need_input, tile.y0,
                kw, *geometry,
            )
            grads.store(hout, need_input, need_offset_mask)
            grad_x = grads.grad_x
        else:
            columns = _sample(data, tile, kw, geometry)
        if need_weight:
            gemm.accumulate_grad_weight(grad_out_tile, columns)
    grad_weight = gemm.grad_weight() if need_weight else torch.zeros_like(weight)
    return grad_input, grad_offset, grad_weight, grad_mask
