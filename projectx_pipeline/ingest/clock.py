"""The feed clock: the feed's own event time carried forward by the wall time elapsed since.

Closing bars by this clock (rather than by the machine's wall clock alone) makes a replay at any
speed produce the same bars as live, and a quiet market still closes its bars.
"""

from __future__ import annotations

import threading
import time


class FeedClock:
    def __init__(self, monotonic=time.monotonic):
        self._monotonic = monotonic
        self._event_ns: int | None = None
        self._at: float = 0.0
        self._lock = threading.Lock()

    def observe(self, event_ns: int) -> None:
        """An event stamped `event_ns` arrived now. Out-of-order (older) stamps never move it back."""
        now = self._monotonic()
        with self._lock:
            if self._event_ns is None or event_ns >= self.now_ns_locked(now):
                self._event_ns, self._at = int(event_ns), now

    def now_ns_locked(self, mono: float) -> int:
        assert self._event_ns is not None, "now_ns_locked before the first event"
        return self._event_ns + int((mono - self._at) * 1e9)

    def now_ns(self) -> int | None:
        """Current feed time, or None before the first event."""
        with self._lock:
            if self._event_ns is None:
                return None
            return self.now_ns_locked(self._monotonic())

    @property
    def known(self) -> bool:
        return self._event_ns is not None
