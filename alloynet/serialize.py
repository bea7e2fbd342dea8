"""Plain JSON from what metrics and reports hold: one cleaner for every JSON file alloynet writes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(x: Any) -> Any:
    """numpy scalars/arrays become Python numbers/lists, paths strings, and NaN/infinity ``None``: JSON has
    no NaN, and an undefined metric (e.g. AUC of a class absent from the test set) is honestly null."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x
