"""CPUs of the serving process: how many it may use, and how the service splits them.

1. `available_cpus()`: the process's affinity mask, capped by a cgroup v2 CPU quota (what a
   container's ``--cpus`` sets), at least 1.
2. `serving_cpus(settings)`: (BentoML worker processes, CPU threads per worker) from the
   settings `serving_threads` (HOMEFEED_SERVING_THREADS, default 1) and `serving_workers`
   (HOMEFEED_SERVING_WORKERS, default: the available CPUs / threads), so workers x threads = the
   CPUs given. Each worker runs torch with one intra-op thread (on small shared hosts OpenMP
   barriers wait for descheduled threads) and scores a request's candidate chunks on `threads` Python
   threads (`ServedRanker(workers=...)`).
   One process per CPU is the default because it measured best under concurrent load on a
   shared 2-core host (docs/benchmarks.md); chunk threads only shorten one request.

No torch import: the service module reads this at import time, in BentoML's arbiter too.
"""

from __future__ import annotations

import math
import os

from homefeed.settings import Settings, load_settings


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


def serving_cpus(settings: Settings | None = None, cpus: int | None = None) -> tuple[int, int]:
    """(worker processes, CPU threads per worker); `cpus` defaults to `available_cpus()`."""
    settings = load_settings() if settings is None else settings
    threads = settings.serving_threads
    workers = settings.serving_workers or max(1, (cpus or available_cpus()) // threads)
    return workers, threads


__all__ = ["available_cpus", "serving_cpus"]
