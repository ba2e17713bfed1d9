"""Per-layer offset statistics, for reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .capture import OffsetRecord

__all__ = ["offset_statistics"]


def offset_statistics(
    records: Mapping[str, OffsetRecord | Sequence[OffsetRecord]],
) -> list[dict[str, object]]:
    """One dict per layer over all its recorded images and passes.

    Keys: ``layer``; ``mean_abs`` and ``max_abs``, the mean / max of ``|Δh|`` and ``|Δw|``;
    ``mean_shift``, the mean length of a point's displacement ``sqrt(Δh² + Δw²)`` (input
    pixels); ``mask_mean``, the mean modulation (None for DCN v1 layers).
    """
    rows = []
    for name, value in records.items():
        recs = [value] if isinstance(value, OffsetRecord) else list(value)
        if not recs:
            continue
        # (n, G*kk, 2, Hout, Wout) per pass, flattened to (points, 2) pairs of (Δh, Δw)
        pairs = torch.cat([r.offset.double().unflatten(1, (-1, 2)).movedim(2, -1)
                           .reshape(-1, 2) for r in recs])
        masks = [r.mask.double().flatten() for r in recs if r.mask is not None]
        rows.append({
            "layer": name,
            "mean_abs": pairs.abs().mean().item() if pairs.numel() else 0.0,
            "max_abs": pairs.abs().max().item() if pairs.numel() else 0.0,
            "mean_shift": pairs.norm(dim=1).mean().item() if pairs.numel() else 0.0,
            "mask_mean": torch.cat(masks).mean().item() if masks else None,
        })
    return rows
