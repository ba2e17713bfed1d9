"""Slow, obviously correct pure-torch references, written straight from ``shared/SPEC.md``.

They are the oracle for every fast kernel: autograd gives their gradients, and they
favour plain indexing over speed. Shapes follow the spec: N batch, C channels, K RoIs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bilinear(plane: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """Sample ``plane`` at real positions ``(h, w)`` with the spec's zero-padding rule.

    Args:
        plane: ``(B, C, H, W)`` feature planes.
        h, w: ``(B, *S)`` sample coordinates, one set per batch entry (any shape S).

    Returns:
        ``(B, C, *S)`` sampled values. A sample with ``h <= -1``, ``h >= H``, ``w <= -1``
        or ``w >= W`` (or a NaN coordinate) is 0; otherwise corners outside the plane
        contribute 0. Autograd gives the derivative of the piecewise-bilinear function
        with the same ``floor`` corners (the right-hand derivative at integer points).
    """
    batch, channels, height, width = plane.shape
    sample_shape = h.shape[1:]
    h = h.reshape(batch, -1)
    w = w.reshape(batch, -1)
    inside = (h > -1) & (h < height) & (w > -1) & (w < width)
    # Replace samples outside the support by 0 before floor(): keeps inf/NaN out of the graph.
    h = torch.where(inside, h, torch.zeros_like(h))
    w = torch.where(inside, w, torch.zeros_like(w))
    h0 = torch.floor(h)
    w0 = torch.floor(w)
    lh = h - h0
    lw = w - w0
    h0 = h0.long()
    w0 = w0.long()
    flat = plane.reshape(batch, channels, height * width)
    value = torch.zeros(batch, channels, h.shape[1], dtype=plane.dtype, device=plane.device)
    corners = (
        (h0, w0, (1 - lh) * (1 - lw)),
        (h0, w0 + 1, (1 - lh) * lw),
        (h0 + 1, w0, lh * (1 - lw)),
        (h0 + 1, w0 + 1, lh * lw),
    )
    for ch, cw, weight in corners:
        valid = inside & (ch >= 0) & (ch < height) & (cw >= 0) & (cw < width)
        index = (ch.clamp(0, height - 1) * width + cw.clamp(0, width - 1)).unsqueeze(1)
        gathered = torch.gather(flat, 2, index.expand(batch, channels, -1))
        value = value + torch.where(valid.unsqueeze(1), weight.unsqueeze(1) * gathered, 0.0)
    return value.reshape(batch, channels, *sample_shape)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution (DCN v1; v2 with ``mask``), SPEC section deform_conv2d.

    Shapes: input ``(N, Cin, H, W)``, offset ``(N, 2*G*kh*kw, Hout, Wout)``,
    weight ``(Cout, Cin/groups, kh, kw)``, bias ``(Cout,)``, mask ``(N, G*kh*kw, Hout, Wout)``.
    Returns ``(N, Cout, Hout, Wout)``. Builds the whole column tensor: small inputs only.
    """
    n, cin, height, width = input.shape
    cout, cin_per_group, kh, kw = weight.shape
    groups = cin // cin_per_group
    kk = kh * kw
    offset_groups = offset.shape[1] // (2 * kk)
    hout, wout = offset.shape[2], offset.shape[3]
    channels_per_offset_group = cin // offset_groups

    base_y = torch.arange(hout, dtype=input.dtype, device=input.device) * stride[0] - padding[0]
    base_x = torch.arange(wout, dtype=input.dtype, device=input.device) * stride[1] - padding[1]
    # columns[n, c, k, y, x] = mask * bilinear(input[n, c], sample position of kernel point k)
    columns = []
    for g in range(offset_groups):
        planes = input[:, g * channels_per_offset_group : (g + 1) * channels_per_offset_group]
        per_point = []
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                dy = offset[:, 2 * (g * kk + k)]
                dx = offset[:, 2 * (g * kk + k) + 1]
                h = base_y.view(1, hout, 1) + i * dilation[0] + dy
                w = base_x.view(1, 1, wout) + j * dilation[1] + dx
                sampled = bilinear(planes, h, w)
                if mask is not None:
                    sampled = sampled * mask[:, g * kk + k].unsqueeze(1)
                per_point.append(sampled)
        columns.append(torch.stack(per_point, dim=2))
    cols = torch.cat(columns, dim=1)  # (N, Cin, kk, Hout, Wout)

    cols = cols.reshape(n, groups, cin_per_group * kk, hout, wout)
    w = weight.reshape(groups, cout // groups, cin_per_group * kk)
    out = torch.einsum("gok,ngkyx->ngoyx", w, cols).reshape(n, cout, hout, wout)
    if bias is not None:
        out = out + bias.view(1, cout, 1, 1)
    return out
