"""A pandas Hamilton dataflow: ``@extract_columns`` and a ``@check_output`` on a Series."""

from __future__ import annotations

import pandas as pd
from hamilton.function_modifiers import check_output, extract_columns


@extract_columns("width", "height")
def boxes(n_boxes: int, scale: float = 1.0) -> pd.DataFrame:
    """``n_boxes`` boxes, the i-th ``i + 1`` wide and ``2 * i`` high, times ``scale``."""
    return pd.DataFrame(
        {
            "width": [scale * (i + 1) for i in range(n_boxes)],
            "height": [scale * 2 * i for i in range(n_boxes)],
        }
    )


@check_output(range=(0.0, 1e9), importance="fail")
def area(width: pd.Series, height: pd.Series) -> pd.Series:
    return width * height


def total_area(area: pd.Series) -> float:
    return float(area.sum())
