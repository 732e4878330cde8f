"""stream/watchdog.py: a process stuck between two steps writes its stacks and exits 1; work
inside `paused()` is not a hang. Each case is a process of its own (the timer is per process)."""

import subprocess
import sys
import time

import pytest


def run(code: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", "from homefeed.stream import watchdog\nimport time\n" + code],
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def test_a_step_that_never_ends_dumps_every_thread_and_exits():
    result, seconds = run("watchdog.arm(1.0)\n"
                          "def stuck_in_a_batch():\n    time.sleep(30)\n"
                          "stuck_in_a_batch()\n")
    assert result.returncode == 1, result.stderr
    assert seconds < 20  # ended by the watchdog, not by the 30 s sleep
    assert "Timeout (0:00:01)!" in result.stderr and "stuck_in_a_batch" in result.stderr


@pytest.mark.parametrize("code", [
    # re-armed at every step: five 0.6 s steps under a 1 s watchdog
    "watchdog.arm(1.0)\nfor _ in range(5):\n    time.sleep(0.6)\n    watchdog.arm()\nwatchdog.disarm()\n",
    # paused around a long restore, armed again after it; off once disarmed
    "watchdog.arm(1.0)\nwith watchdog.paused():\n    time.sleep(2.0)\nwatchdog.disarm()\ntime.sleep(1.5)\n",
    # 0: never armed
    "watchdog.arm(0)\ntime.sleep(1.5)\nwith watchdog.paused():\n    pass\n",
])
def test_steps_that_keep_coming_and_paused_work_are_not_hangs(code):
    result, _ = run(code)
    assert result.returncode == 0, result.stderr
    assert "Timeout" not in result.stderr


def test_the_watchdog_is_armed_again_after_a_pause():
    result, seconds = run("watchdog.arm(1.0)\nwith watchdog.paused():\n    time.sleep(1.5)\ntime.sleep(30)\n")
    assert result.returncode == 1 and seconds < 20, result.stderr
