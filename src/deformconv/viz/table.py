"""Markdown tables from lists of dicts, for reports."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["markdown_table"]


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
                   digits: int = 3) -> str:
    """A GitHub-markdown table, one line per row; floats with ``digits`` decimals, NaN and
    None as ``–``. ``columns`` defaults to the first row's keys."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    if not columns:
        raise ValueError("markdown_table needs columns: got no rows and no columns")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c), digits) for c in columns) + " |"
              for row in rows]
    return "\n".join(lines)
