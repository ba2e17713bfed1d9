"""Slow, obviously correct pure-torch references, written straight from ``docs/OPS.md``.

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
        with the same ``floor`` corners (the right-hand derivative at integer points, so
        also at ``h == -1`` or ``w == -1``, where the value is 0 but its slope is not).
    """
    batch, channels, height, width = plane.shape
    sample_shape = h.shape[1:]
    h = h.reshape(batch, -1)
    w = w.reshape(batch, -1)
    # Closed at -1: there the corner weights on row/column 0 are 0 (lh or lw is 0), so the
    # value is the spec's 0, and autograd sees their slope.
    inside = (h >= -1) & (h < height) & (w >= -1) & (w < width)
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
    """Deformable convolution (DCN v1; v2 with ``mask``), docs/OPS.md, ``deform_conv2d``.

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

    def grid(size: int, kernel: int, stride: int, pad: int, dil: int) -> Tensor:
        """``(kernel, size)`` integer parts ``y*stride - pad + i*dil`` of the sample positions,
        summed exactly in Python ints (a float sum rounds above 2**53), then rounded once."""
        return torch.tensor([[float(y * stride - pad + i * dil) for y in range(size)]
                             for i in range(kernel)], dtype=input.dtype, device=input.device)

    rows = grid(hout, kh, stride[0], padding[0], dilation[0])
    cols = grid(wout, kw, stride[1], padding[1], dilation[1])
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
                h = rows[i].view(1, hout, 1) + dy
                w = cols[j].view(1, 1, wout) + dx
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


def clamp_into_plane(coord: Tensor, size: int) -> Tensor:
    """Clamp sample coordinates into ``[0, size - 1]`` the way RoI pooling kernels do.

    ``torch.where`` (not ``clamp``) so that autograd gives 0 wherever the clamp holds the
    coordinate still, and the right-hand derivative at 0 (the bilinear function's rule).
    """
    coord = torch.where(coord < 0, torch.zeros_like(coord), coord)
    return torch.where(coord >= size - 1, torch.full_like(coord, size - 1), coord)


def deform_roi_pool(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None = None,
    output_size: tuple[int, int] = (7, 7),
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    aligned: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable RoI pooling, docs/OPS.md, ``deform_roi_pool`` (RoIAlign with moving bins).

    Shapes: input ``(N, C, H, W)``, rois ``(K, 5)``, offset ``(K, 2, ph, pw)`` (Δx̂, Δŷ),
    mask ``(K, 1, ph, pw)``. Returns ``(K, C, ph, pw)``. One RoI at a time, torchvision's
    RoIAlign sampling: a sample with y < -1, y > H, x < -1 or x > W is 0 (but counted);
    otherwise it is clamped into the plane and interpolated.
    """
    _, channels, height, width = input.shape
    ph, pw = output_size
    outputs = []
    for k in range(rois.shape[0]):
        b = int(rois[k, 0])
        shift = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (rois[k, i] * spatial_scale - shift for i in range(1, 5))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        gh = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(roi_h / ph))
        gw = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(roi_w / pw))
        count = max(gh * gw, 1)
        iy = torch.arange(max(gh, 0), dtype=input.dtype, device=input.device)
        ix = torch.arange(max(gw, 0), dtype=input.dtype, device=input.device)
        bins_y = torch.arange(ph, dtype=input.dtype, device=input.device)
        bins_x = torch.arange(pw, dtype=input.dtype, device=input.device)
        # (ph, pw, gh, gw) sample positions
        y = (y1 + bins_y * bin_h).view(ph, 1, 1, 1) + ((iy + 0.5) * bin_h / gh).view(1, 1, -1, 1)
        x = (x1 + bins_x * bin_w).view(1, pw, 1, 1) + ((ix + 0.5) * bin_w / gw).view(1, 1, 1, -1)
        if offset is not None:
            y = y + (gamma * roi_h * offset[k, 1]).view(ph, pw, 1, 1)
            x = x + (gamma * roi_w * offset[k, 0]).view(ph, pw, 1, 1)
        y, x = torch.broadcast_tensors(y, x)
        taken = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
        values = bilinear(input[b : b + 1], clamp_into_plane(y, height)[None],
                          clamp_into_plane(x, width)[None])[0]  # (C, ph, pw, gh, gw)
        values = torch.where(taken, values, torch.zeros_like(values))
        pooled = values.sum(dim=(3, 4)) / count
        if mask is not None:
            pooled = pooled * mask[k]
        outputs.append(pooled)
    if not outputs:
        return input.new_zeros(0, channels, ph, pw)
    return torch.stack(outputs)


def deform_psroi_pool(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    spatial_scale: float,
    output_dim: int,
    group_size: int,
    pooled_size: int,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Deformable position-sensitive RoI pooling, docs/OPS.md, ``deform_psroi_pool``.

    Shapes: input ``(N, output_dim*group_size**2, H, W)``, rois ``(K, 5)``, offset
    ``(K, 2*num_classes, part_size, part_size)`` or None. Returns the pooled output and
    the number of samples taken, both ``(K, output_dim, pooled_size, pooled_size)``.
    """
    _, _, height, width = input.shape
    size = pooled_size
    part_size = pooled_size if part_size is None else part_size
    num_classes = 1 if offset is None else offset.shape[1] // 2
    per_class = output_dim // num_classes
    factory = {"dtype": input.dtype, "device": input.device}
    # Index tables over (ctop, ph, pw): input channel, class, and part cell of each bin.
    ctop = torch.arange(output_dim).view(-1, 1, 1)
    bin_h = torch.arange(size).view(1, -1, 1)
    bin_w = torch.arange(size).view(1, 1, -1)
    group_h = (bin_h * group_size // size).clamp(0, group_size - 1)
    group_w = (bin_w * group_size // size).clamp(0, group_size - 1)
    channel = ((ctop * group_size + group_h) * group_size + group_w).reshape(-1)
    cls = (ctop // per_class).expand(-1, size, size).reshape(-1)
    part_h = torch.tensor([i * part_size // size for i in range(size)])  # exact floor
    part_w = part_h.view(1, 1, -1).expand(output_dim, size, size).reshape(-1)
    part_h = part_h.view(1, -1, 1).expand(output_dim, size, size).reshape(-1)
    bin_h = bin_h.expand(output_dim, size, size).reshape(-1).to(**factory)
    bin_w = bin_w.expand(output_dim, size, size).reshape(-1).to(**factory)
    steps = torch.arange(sample_per_part, **factory)

    outputs, counts = [], []
    for k in range(rois.shape[0]):
        b = int(rois[k, 0])
        x1, y1, x2, y2 = (torch.sign(v) * torch.floor(v.abs() + 0.5) for v in rois[k, 1:])
        start_w, start_h = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
        end_w, end_h = (x2 + 1) * spatial_scale - 0.5, (y2 + 1) * spatial_scale - 0.5
        roi_w = (end_w - start_w).clamp(min=0.1)
        roi_h = (end_h - start_h).clamp(min=0.1)
        bin_size_w, bin_size_h = roi_w / size, roi_h / size
        wstart = bin_w * bin_size_w + start_w  # (M,) over the M = output_dim*size*size bins
        hstart = bin_h * bin_size_h + start_h
        if offset is not None:
            wstart = wstart + offset[k, 2 * cls, part_h, part_w] * trans_std * roi_w
            hstart = hstart + offset[k, 2 * cls + 1, part_h, part_w] * trans_std * roi_h
        # (M, S, S) sample positions, rows ih and columns iw
        w = wstart.view(-1, 1, 1) + (steps * (bin_size_w / sample_per_part)).view(1, 1, -1)
        h = hstart.view(-1, 1, 1) + (steps * (bin_size_h / sample_per_part)).view(1, -1, 1)
        h, w = torch.broadcast_tensors(h, w)
        taken = (w >= -0.5) & (w <= width - 0.5) & (h >= -0.5) & (h <= height - 0.5)
        planes = input[b, channel].unsqueeze(1)  # (M, 1, H, W): each bin's own channel
        values = bilinear(planes, clamp_into_plane(h, height), clamp_into_plane(w, width))
        values = torch.where(taken, values[:, 0], torch.zeros_like(values[:, 0]))
        count = taken.sum(dim=(1, 2)).to(input.dtype)
        pooled = values.sum(dim=(1, 2)) / count.clamp(min=1)
        outputs.append(pooled.view(output_dim, size, size))
        counts.append(count.view(output_dim, size, size))
    if not outputs:
        empty = input.new_zeros(0, output_dim, size, size)
        return empty, empty.clone()
    return torch.stack(outputs), torch.stack(counts)
