"""The offline log's append: one fsynced file per event month, read back whole."""

from __future__ import annotations

import pandas as pd
import pytest

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


@pytest.mark.parametrize("view", F.SEQUENCE_VIEWS, ids=lambda v: v.name)
def test_sequence_rows_go_to_the_log_as_arrow_equal_to_the_pandas_conversion(tmp_path, view):
    import pyarrow as pa

    from homefeed.sequence import build
    from homefeed.stream.frames import sequence_table

    t0 = 1_767_225_600_000  # 2026-01-01
    rows = []
    for u, n in ((1, 1), (2, 100), (3, 7)):
        state = build([(f"e{u}-{i}", 10 + i, 1 + i % 3, t0 - 1000 * i) for i in range(n)], 100)
        rows.append({F.USER_ID: u, F.EVENT_TIMESTAMP: t0 - 86_400_000 * u, F.CREATED: t0 + u,
                     **state.feature_row(view)})
    table = sequence_table(rows, view)
    frame = pd.DataFrame(rows)
    for col in (F.EVENT_TIMESTAMP, F.CREATED):
        frame[col] = offline_log.to_utc_us(frame[col])
    frame[view.length] = frame[view.length].astype("int32")
    assert table.equals(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None))
    assert view.action_types or F.SEQ_ACTION_TYPES not in table.column_names
    files = offline_log.append(tmp_path, view.name, table)
    assert [p.parent.name for p in files] == ["month=2025-12"]  # all three rows: one file
    back = offline_log.read(tmp_path, view.name).sort_values(F.USER_ID)
    assert back[view.length].tolist() == [1, 100, 7]
    assert [list(v) for v in back[view.pin_ids]] == [r[view.pin_ids] for r in rows]
    assert files[0].name.startswith(f"{t0 + 3:013d}-")  # named by the newest created time
