"""The simulator's market clock: the replay position, and how fast it moves.

The clock advances at `speed` × real time, or with "max" as fast as the slowest subscribed
client reads (one source step at a time; a client that reads nothing for the hubs'
`send_timeout` is dropped). History never holds a trade at or after it, and trades released
before a client subscribed are lost to that client.

A step that fails is logged and counted (`errors`) and the clock moves on: one bad step must not
stop the market for every client, nor die unseen inside the server's task list."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal

from projectx_pipeline.domain.timestamps import NS_PER_SECOND

from ...logs import get_logger, kv
from .market import MarketSource

log = get_logger("projectx.simulator")

MAX_SPEED: Final = "max"
TICK_SECONDS = 0.05  # how often the clock advances at a numeric speed


def parse_speed(value: object) -> float | Literal["max"]:
    """A replay speed: "max" or a positive finite multiple of real time."""
    if isinstance(value, str) and value.strip().lower() == MAX_SPEED:
        return MAX_SPEED
    try:
        speed = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"invalid speed {value!r}: expected a positive number or 'max'") from None
    if not math.isfinite(speed) or speed <= 0 or isinstance(value, bool):
        raise ValueError(f"invalid speed {value!r}: expected a positive number or 'max'")
    return speed


class MarketClock:
    """The replay position (`now_ns`): every trade before it has been released, none after.

    `paused` and `waiting_for_subscriber` hold it; `run` moves it and hands every new position
    to `advance`, and once a replay is over keeps calling `finished_tick` so that quotes go on."""

    def __init__(self, source: MarketSource, speed: float | Literal["max"], wait_for_subscriber: bool):
        self._source = source
        self.now_ns = source.start_ns
        self.speed = speed
        self.paused = False
        self.waiting_for_subscriber = wait_for_subscriber
        self.errors = 0  # steps whose advance or finished_tick raised

    @property
    def finished(self) -> bool:
        return self._source.end_ns is not None and self.now_ns >= self._source.end_ns

    def set_speed(self, speed: object) -> None:
        speed = parse_speed(speed)
        if speed == MAX_SPEED and self._source.end_ns is None:
            raise ValueError("speed 'max' needs a replay")
        self.speed = speed

    async def run(self, advance: Callable[[int], Awaitable[None]], finished_tick: Callable[[float], Awaitable[None]]) -> None:
        last_wall = time.monotonic()
        while True:
            now = time.monotonic()
            elapsed, last_wall = now - last_wall, now
            end_ns = self._source.end_ns
            if self.paused or self.waiting_for_subscriber:
                await asyncio.sleep(TICK_SECONDS)
                continue
            if end_ns is not None and self.now_ns >= end_ns:
                # The replay is over: keep quoting the end clock so clients can close their last bar.
                await self._step("finished_tick", finished_tick(now))
                await asyncio.sleep(TICK_SECONDS)
                continue
            if self.speed == MAX_SPEED:
                assert end_ns is not None  # speed "max" is refused without a replay (set_speed, SimulatorServer)
                target = self._source.next_step_ns(self.now_ns) or end_ns
            else:
                target = self.now_ns + int(elapsed * self.speed * NS_PER_SECOND)
            if end_ns is not None:
                target = min(target, end_ns)
            if not await self._step("advance", advance(target)):
                # Skip past the failing step rather than retry it forever; its trades are lost
                # to the clients, which repair them from history like any other gap.
                self.now_ns = max(self.now_ns, target)
            await asyncio.sleep(0 if self.speed == MAX_SPEED else TICK_SECONDS)

    async def _step(self, name: str, step: Awaitable[None]) -> bool:
        try:
            await step
            return True
        except Exception:
            self.errors += 1
            log.exception(kv("simulator_step_failed", step=name, clock_ns=self.now_ns, errors=self.errors))
            return False
