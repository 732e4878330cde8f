"""`scoped_env`: set and unset environment variables for a block, then put them back.

The private stacks of the benchmarks, the fault matrix and the tests, and the bento
build's registry snapshot, all point this process (and the subprocesses it starts) somewhere
else for a while through HOMEFEED_* variables; this is the one place that restores them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str | None] | None = None, *, unset: Iterable[str] = (),
               restore: Iterable[str] = ()) -> Iterator[None]:
    """Unset `unset`, then set `values` (a None value unsets that name); on exit, whatever
    happened inside, every one of those names and of `restore` (names the block itself changes)
    is back as it was: set to its old value, or unset if it was not set."""
    values = dict(values or {})
    unset = tuple(unset)
    saved = {name: os.environ.get(name) for name in (*unset, *values, *restore)}
    try:
        for name in unset:
            os.environ.pop(name, None)
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
