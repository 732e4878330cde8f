"""Feast without its process-wide side effect on Prometheus metrics.

1. Importing Feast (``feast.metrics``) switches prometheus_client to multiprocess mode for the whole
   process: it sets ``PROMETHEUS_MULTIPROCESS_DIR`` and ``PROMETHEUS_MULTIPROC_DIR`` to a temporary
   directory it deletes at exit, for its own pre-forked feature server. In a homefeed process that
   turns every metric value into a file in that directory, makes two registries' metrics of one
   name share their values, and hands child processes a directory that vanishes with the parent.
2. `undo_multiprocess_metrics()` takes it back when Feast made that choice (it created the
   directory): the variables it set are removed and prometheus_client's value class is the
   in-process one again. A variable a server set itself (BentoML's workers set
   PROMETHEUS_MULTIPROC_DIR) is left alone, and so is the value class it chose.
3. Every module that imports Feast at module level imports this one after it (the import runs
   step 2 once per process).
"""

from __future__ import annotations

import os

MULTIPROCESS_VARIABLES = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def undo_multiprocess_metrics() -> bool:
    """Step 2; True when there was something to undo."""
    from feast import metrics as feast_metrics
    from prometheus_client import values

    directory = getattr(feast_metrics, "_prometheus_mp_dir", None)
    if not getattr(feast_metrics, "_owns_mp_dir", False) or directory is None:
        return False
    removed = [name for name in MULTIPROCESS_VARIABLES if os.environ.get(name) == directory]
    for name in removed:
        del os.environ[name]
    # prometheus_client chose its value class from PROMETHEUS_MULTIPROC_DIR: in-process again only
    # when that was Feast's and no server's variable is left (BentoML's workers keep theirs)
    if "PROMETHEUS_MULTIPROC_DIR" in removed and not any(
            name in os.environ for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")):
        values.ValueClass = values.MutexValue
    return bool(removed)


undo_multiprocess_metrics()
