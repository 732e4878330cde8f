"""How the service splits its CPUs (homefeed.serving.resources): workers x threads."""

from __future__ import annotations

import os

import pytest

from homefeed.serving.resources import (
    THREADS_ENV,
    WORKERS_ENV,
    available_cpus,
    serving_cpus,
)


def test_available_cpus_is_the_affinity_mask_at_most():
    n = available_cpus()
    assert 1 <= n <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def test_workers_times_threads_defaults_to_the_cpus_given():
    assert serving_cpus({}, cpus=8) == (8, 1)  # one process per CPU, one thread each
    assert serving_cpus({THREADS_ENV: "2"}, cpus=8) == (4, 2)
    assert serving_cpus({THREADS_ENV: "4"}, cpus=2) == (1, 4)  # never 0 workers
    assert serving_cpus({WORKERS_ENV: "3"}, cpus=8) == (3, 1)
    assert serving_cpus({WORKERS_ENV: " 2 ", THREADS_ENV: "1"}, cpus=8) == (2, 1)
    assert serving_cpus({}) == (available_cpus(), 1)


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_values_are_refused_naming_the_variable(bad):
    with pytest.raises(ValueError, match=WORKERS_ENV):
        serving_cpus({WORKERS_ENV: bad}, cpus=2)
    with pytest.raises(ValueError, match=THREADS_ENV):
        serving_cpus({THREADS_ENV: bad}, cpus=2)
