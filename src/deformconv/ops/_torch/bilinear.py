"""Bilinear sampling with torch gathers, differentiable by autograd (docs/OPS.md: bilinear).

All four corners of every sample are gathered at once. Corners outside the plane weigh 0
and count as 0 (an inf or NaN gathered in their place does not leak in).
No separate "inside" test: a sample with ``h <= -1`` or ``h >= H`` has no corner inside,
so it is 0 anyway, and the derivative is that of the piecewise-bilinear function with the
``floor`` corners -- the right-hand derivative at integer points, also on row -1 (whose
lower corner, row 0, is inside).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _far_clamp(coord: Tensor, size: int) -> Tensor:
    """Coordinates beyond ``[-2, size + 1]`` (and NaN) moved to -2 or ``size + 1``.

    Keeps ``floor`` and the index arithmetic finite; every corner there is outside the
    plane either way, so values and gradients are unchanged (0).
    """
    coord = torch.where(coord > -2, coord, torch.full_like(coord, -2.0))
    return torch.where(coord < size + 1, coord, torch.full_like(coord, size + 1.0))


def bilinear(planes: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """Sample ``planes (B, C, H, W)`` at ``h, w (B, *S)``; returns ``(B, C, *S)``."""
    batch, channels, height, width = planes.shape
    sample_shape = h.shape[1:]
    h = _far_clamp(h.reshape(batch, 1, -1), height)
    w = _far_clamp(w.reshape(batch, 1, -1), width)
    h0, w0 = torch.floor(h), torch.floor(w)
    lh, lw = h - h0, w - w0
    rows = h0.long() + torch.tensor([0, 0, 1, 1], device=h.device).view(1, 4, 1)  # (B, 4, S)
    cols = w0.long() + torch.tensor([0, 1, 0, 1], device=w.device).view(1, 4, 1)
    weight_h = torch.cat([1 - lh, 1 - lh, lh, lh], dim=1)
    weight_w = torch.cat([1 - lw, lw, 1 - lw, lw], dim=1)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    weight = torch.where(inside, weight_h * weight_w, torch.zeros_like(weight_h))
    index = torch.where(inside, rows * width + cols, torch.zeros_like(rows))
    flat = planes.reshape(batch, channels, height * width)
    gathered = torch.gather(flat, 2, index.reshape(batch, 1, -1).expand(-1, channels, -1))
    gathered = gathered.view(batch, channels, 4, -1)
    # Corners outside gathered pixel 0, whose zero weight makes an inf or NaN there NaN:
    # then zero them. A pass over every corner, paid only when pixel 0 is not finite.
    if not flat[:, :, 0].isfinite().all():
        gathered = gathered.masked_fill(~inside.unsqueeze(1), 0.0)
    values = (gathered * weight.unsqueeze(1)).sum(dim=2)
    return values.view(batch, channels, *sample_shape)


def clamp_into_plane(coord: Tensor, size: int) -> Tensor:
    """Clamp RoI-pooling sample coordinates into ``[0, size - 1]``.

    The derivative is 1 inside ``[0, size - 1)`` and 0 where the clamp holds the coordinate
    (at ``size - 1`` too, where interpolation along that axis is flat from the right).
    """
    moves = (coord >= 0) & (coord < size - 1)
    return torch.where(moves, coord, coord.detach().clamp(0, size - 1))
