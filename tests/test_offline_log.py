"""The offline log's append: one fsynced file per event month, read back whole."""

from __future__ import annotations

import pandas as pd

from homefeed import features as F
from homefeed import offline_log


def test_append_writes_one_file_per_event_month_and_reads_back_every_row(tmp_path):
    times = pd.to_datetime(["2025-12-31 23:59:59.999", "2026-01-01 00:00:00", "2025-12-01 00:00:00",
                            "2026-02-28 12:00:00", "2026-01-15 00:00:00"], utc=True, format="ISO8601")
    rows = pd.DataFrame({F.USER_ID: [1, 2, 3, 4, 5], F.EVENT_TIMESTAMP: times,
                         F.CREATED: times + pd.Timedelta(seconds=1)})
    files = offline_log.append(tmp_path, "action_events", rows)
    months = sorted(p.parent.name for p in files)
    assert months == ["month=2025-12", "month=2026-01", "month=2026-02"]
    by_month = {p.parent.name: set(pd.read_parquet(p)[F.USER_ID]) for p in files}
    assert by_month == {"month=2025-12": {1, 3}, "month=2026-01": {2, 5}, "month=2026-02": {4}}
    back = offline_log.read(tmp_path, "action_events").sort_values(F.USER_ID)
    assert back[F.USER_ID].tolist() == [1, 2, 3, 4, 5]
    assert (back[F.EVENT_TIMESTAMP].to_numpy() == rows[F.EVENT_TIMESTAMP].to_numpy()).all()
    assert not list(tmp_path.rglob(".*.tmp"))  # written atomically
