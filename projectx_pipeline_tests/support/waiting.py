"""Event-driven waits: poll a condition, never sleep for a fixed time."""

from __future__ import annotations

import time


def wait_for(condition, timeout: float, what, interval: float = 0.2):
    """Poll `condition` until it returns something truthy; fail naming `what` (a string, or a
    callable giving one at the time of the failure) after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 — e.g. the database being restarted; retried
            last_error = exc
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)
