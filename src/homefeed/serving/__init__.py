"""Serving: fast online feature reads and the served (user-side split) ranker.

* `homefeed.serving.online_features`: `OnlineFeatureReader` (Feast's Redis hashes read directly,
  pin cache with a staleness bound), `FeatureStoreUnavailable`. Imports feast and redis.
* `homefeed.serving.fast_model`: `ServedRanker`, `UserTensors`. Imports only torch, numpy and
  `homefeed.model` (runs on a GPU machine without feast/bentoml/redis). It runs TransAct through
  `homefeed.serving.transact_split` and picks its dtype with `homefeed.serving.hardware`.
* Their benchmarks, `homefeed bench model|features`, are `homefeed.bench.serve` (also
  ``python -m homefeed.bench.serve``).

Nothing is imported here eagerly; the names below load their module on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "OnlineFeatureReader": "homefeed.serving.online_features",
    "FeatureStoreUnavailable": "homefeed.serving.online_features",
    "UserFeatures": "homefeed.serving.online_features",
    "PinFeatures": "homefeed.serving.online_features",
    "ServedRanker": "homefeed.serving.fast_model",
    "UserTensors": "homefeed.serving.fast_model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'homefeed.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
