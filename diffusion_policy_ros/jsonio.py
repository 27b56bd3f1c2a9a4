"""The JSON every report is written as: plain types, NaN/inf as null, floats rounded.

Reports are read by people and diffed between runs; 17-digit floats (0.30000000000000004) make both
harder and carry no information a measurement has.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

REPORT_DIGITS = 6  # significant digits of a float in a report


def json_safe(value: Any, digits: int | None = None) -> Any:
    """Plain JSON: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists; with `digits`,
    floats rounded to that many significant digits."""
    if isinstance(value, dict):
        return {str(k): json_safe(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist(), digits)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f'{value:.{digits}g}') if digits else value
    return value


def write_json(path: str | Path, document: Any, digits: int = REPORT_DIGITS) -> Path:
    """Write a report as strict JSON with rounded floats; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(json_safe(document, digits), indent=1, allow_nan=False) + '\n')
    return path
