"""Sequence building rules (pure logic)."""

from homefeed.sequence import SequenceState, build, merge, next_snapshot_ms


def act(i: int, t: int, pin: int = 0, action: int = 1):
    return (f"e{i}", pin or 1000 + i, action, t)


def test_newest_first_by_event_time_and_capped():
    state = build([act(i, 1_000 + i) for i in range(150)], cap=100)
    assert len(state) == 100
    assert state.action_times == sorted(state.action_times, reverse=True)
    assert state.action_times[0] == 1_149 and state.action_times[-1] == 1_050


def test_duplicates_change_nothing():
    state = build([act(i, 1_000 + i) for i in range(10)], cap=100)
    again, changed = merge(state, [act(3, 1_003), act(9, 1_009)], cap=100)
    assert not changed and again is state


def test_late_event_lands_in_event_time_order():
    state = build([act(i, 1_000 + 10 * i) for i in range(5)], cap=100)  # times 1000..1040
    late = ("late", 7, 3, 1_015)
    new, changed = merge(state, [late], cap=100)
    assert changed
    assert new.action_times == [1_040, 1_030, 1_020, 1_015, 1_010, 1_000]
    assert new.event_ids[3] == "late" and new.action_types[3] == 3


def test_event_older_than_the_kept_window_is_not_in_the_sequence():
    state = build([act(i, 10_000 + i) for i in range(100)], cap=100)
    new, changed = merge(state, [("ancient", 1, 1, 5)], cap=100)
    assert not changed and "ancient" not in new.event_ids


def test_snapshot_timestamp_strictly_increases_even_for_a_late_insert():
    state = build([act(i, 1_000 + i) for i in range(3)], cap=100)
    state.snapshot_ms = next_snapshot_ms(state)
    assert state.snapshot_ms == 1_002
    new, _ = merge(state, [("late", 1, 1, 500)], cap=100)
    assert next_snapshot_ms(new) == 1_003  # newest action unchanged: previous + 1 ms


def test_state_round_trips_through_bytes():
    state = build([act(i, 1_000 + i, action=1 + i % 3) for i in range(7)], cap=100)
    state.snapshot_ms = 42
    assert SequenceState.from_bytes(state.to_bytes()) == state
    assert SequenceState.from_bytes(None) == SequenceState()
