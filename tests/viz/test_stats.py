"""Per-layer offset statistics and markdown tables."""

from __future__ import annotations

import math

import pytest
import torch

from deformconv.viz import LayerGeometry, markdown_table, offset_statistics

from .helpers import record


def test_offset_statistics_by_hand():
    geometry = LayerGeometry((3, 3), padding=(1, 1))
    offset = torch.zeros(2, 18, 2, 2)
    offset[1, 4, 0, 1] = 3.0  # point 2 Δh
    offset[1, 5, 0, 1] = -4.0  # point 2 Δw
    mask = torch.full((2, 9, 2, 2), 0.25)
    rows = offset_statistics({
        "a": record(geometry, offset, (2, 2), mask=mask),
        "b": [record(geometry, offset, (2, 2)), record(geometry, -2 * offset, (2, 2))],
        "empty": [],
    })
    assert [row["layer"] for row in rows] == ["a", "b"]
    points = 2 * 9 * 2 * 2  # (image, kernel point, y, x)
    assert rows[0]["mean_abs"] == pytest.approx(7.0 / (2 * points))
    assert rows[0]["max_abs"] == 4.0
    assert rows[0]["mean_shift"] == pytest.approx(5.0 / points)
    assert rows[0]["mask_mean"] == 0.25
    assert rows[1]["max_abs"] == 8.0
    assert rows[1]["mean_shift"] == pytest.approx((5.0 + 10.0) / (2 * points))
    assert rows[1]["mask_mean"] is None


def test_markdown_table():
    rows = [{"layer": "a", "x": 1.23456, "n": 3}, {"layer": "b", "x": math.nan, "n": None}]
    assert markdown_table(rows, digits=2) == (
        "| layer | x | n |\n|---|---|---|\n| a | 1.23 | 3 |\n| b | – | – |"
    )
    assert markdown_table([], ["a"]) == "| a |\n|---|"
    with pytest.raises(ValueError, match="needs columns"):
        markdown_table([])
