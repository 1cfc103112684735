"""Client-side pacing of REST requests against the gateway's per-endpoint budgets.

The gateway allows `History/retrieveBars` 50 requests per 30 s and every other endpoint 200 per
60 s, answering 429 above that. Whether its window is fixed or sliding is unconfirmed; a sliding
window on our side never exceeds the budget under either, so requests are paced before they
are sent instead of being retried after a 429.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .protocol import DEFAULT_BUDGET, HISTORY_BUDGET, HISTORY_ENDPOINT


@dataclass(frozen=True)
class RateBudget:
    requests: int
    per_seconds: float

    def __post_init__(self) -> None:
        if self.requests < 1 or self.per_seconds <= 0:
            raise ValueError(f"invalid rate budget {self.requests} per {self.per_seconds} s")


GATEWAY_BUDGETS: Mapping[str, RateBudget] = {HISTORY_ENDPOINT: RateBudget(*HISTORY_BUDGET)}
# The documentation says "every other endpoint 200 per 60 s" without saying whether that budget
# is per endpoint or shared; the other endpoints share one window here, the safe reading.
GATEWAY_DEFAULT_BUDGET = RateBudget(*DEFAULT_BUDGET)


class _Window:
    def __init__(self, budget: RateBudget):
        self.budget = budget
        self.sent: deque[float] = deque()


class RateLimiter:
    """Sliding-window pacing, thread-safe; one instance is shared by every user of a client.

    Endpoints listed in `budgets` get their own window; all others share the `default` window.
    Each window is held `margin` seconds longer than the budget says: latency varies between
    requests, so one sent exactly a window after another may still reach the gateway inside it.
    `clock` and `sleep` are injectable so that the logic can be tested without waiting."""

    def __init__(
        self,
        budgets: Mapping[str, RateBudget] = GATEWAY_BUDGETS,
        default: RateBudget = GATEWAY_DEFAULT_BUDGET,
        *,
        margin: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._windows = {endpoint: _Window(budget) for endpoint, budget in budgets.items()}
        self._default = _Window(default)
        self._margin = margin
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def _window(self, endpoint: str) -> _Window:
        return self._windows.get(endpoint, self._default)

    def _reserve(self, window: _Window) -> float:
        """Record a send and return 0, or return how long (> 0) to wait before one is allowed."""
        now = self._clock()
        span = window.budget.per_seconds + self._margin
        sent = window.sent
        # The same expression decides expiry and the wait, so that rounding can never yield
        # a wait of 0 for a send that is still inside the window.
        while sent and sent[0] + span - now <= 0:
            sent.popleft()
        if len(sent) < window.budget.requests:
            sent.append(now)
            return 0.0
        return sent[0] + span - now

    def acquire(self, endpoint: str) -> float:
        """Block until a request to `endpoint` fits in its budget, reserve it; return seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                wait = self._reserve(self._window(endpoint))
            if wait <= 0:
                return waited
            # Sleep outside the lock so that requests to other windows are not held up.
            self._sleep(wait)
            waited += wait
