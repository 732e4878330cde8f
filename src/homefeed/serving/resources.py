"""CPUs of the serving process: how many it may use, and how the service splits them.

1. `available_cpus()`: the process's affinity mask, capped by a cgroup v2 CPU quota (what a
   container's ``--cpus`` sets), at least 1.
2. `serving_cpus(environ)`: (BentoML worker processes, CPU threads per worker) from
   HOMEFEED_SERVING_THREADS (default 1) and HOMEFEED_SERVING_WORKERS (default: the available
   CPUs / threads), so workers x threads = the CPUs given. Each worker runs torch with one
   intra-op thread (on small shared hosts OpenMP barriers wait for descheduled threads) and
   scores a request's candidate chunks on `threads` Python threads (`ServedRanker(workers=...)`).
   One process per CPU is the default because it measured best under concurrent load on a
   shared 2-core host (docs/benchmarks.md); chunk threads only shorten one request.

No torch import: the service module reads this at import time, in BentoML's arbiter too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

WORKERS_ENV = "HOMEFEED_SERVING_WORKERS"
THREADS_ENV = "HOMEFEED_SERVING_THREADS"


def available_cpus() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def serving_cpus(environ: Mapping[str, str] | None = None, cpus: int | None = None) -> tuple[int, int]:
    """(worker processes, CPU threads per worker); `cpus` defaults to `available_cpus()`."""
    env = os.environ if environ is None else environ
    threads = _positive(env, THREADS_ENV, 1)
    workers = _positive(env, WORKERS_ENV, max(1, (cpus or available_cpus()) // threads))
    return workers, threads


__all__ = ["THREADS_ENV", "WORKERS_ENV", "available_cpus", "serving_cpus"]
