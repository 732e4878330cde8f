"""The fault matrix (`homefeed bench faults`) in CI: every case against a real private stack.

Same cases as the benchmark command; only the latency bound of a degraded answer under load is
relaxed from the benchmark's p99 target to "under a second" (a timed assertion on a shared
machine would flake; the benchmark figure is recorded in docs/reliability.md).
"""

from __future__ import annotations

import pytest

from homefeed.faults import run_matrix

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fault_matrix(tmp_path, stack_env):
    cases = run_matrix(tmp_path, p99_bound_ms=1000.0)
    failed = [f"{c.case}: expected {c.expected}; observed {c.observed}" for c in cases if not c.passed]
    assert not failed, "\n".join(failed)
    assert len(cases) >= 28
