"""`jsonable`: plain JSON values for `json.dumps` (used by every command that writes a JSON report)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Containers recursively; numpy scalars to Python; NaN/inf to null (json.dumps would write
    NaN); paths to strings; an object with a ``to_json()`` method to what that returns."""
    if hasattr(value, "to_json") and not isinstance(value, type):
        return jsonable(value.to_json())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
