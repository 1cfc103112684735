"""History at any time: a replay's clock can start anywhere in it, or the replay can be moved to
the present so that clients asking for "the last N days" get bars, as from the live gateway."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from projectx_pipeline.dev import simulator_command
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import CalendarRoll, ContractMonth, front_month_at
from projectx_pipeline.domain.sessions import NEW_YORK
from projectx_pipeline.domain.timestamps import to_ns
from projectx_pipeline.errors import UsageError
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.replay import ReplaySource, default_replay_path
from projectx_pipeline.gateway.simulator.replay_time import NS_PER_WEEK, resolve_start_ns, shift_bars_weeks, shift_ns, weeks_to_now
from projectx_pipeline.gateway.simulator.server import SimulatorServer

from .support.market import MES
from .support.network import free_port
from .support.simulator import login

pytestmark = pytest.mark.timeout(120)

FIRST = to_ns(datetime(2025, 3, 16, 22, tzinfo=timezone.utc))  # the sample's first bar
END = to_ns(datetime(2025, 5, 7, 4, 10, tzinfo=timezone.utc))  # the end of its last bar's window


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return read_bars_csv(default_replay_path())


def bars_between(api_url: str, token: str, start: datetime, end: datetime, contract_id: str = MES) -> list[dict]:
    """Complete 5m bars labelled in [start, end), oldest first."""
    body = {
        "contractId": contract_id,
        "live": False,
        "startTime": start.isoformat(),
        "endTime": end.isoformat(),
        "unit": 2,
        "unitNumber": 5,
        "limit": 20_000,
        "includePartialBar": False,
    }
    answer = requests.post(f"{api_url}/api/History/retrieveBars", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert answer["success"], answer
    return answer["bars"][::-1]  # oldest first


# --------------------------------------------------------------------------- the start point


def test_start_forms_resolve_inside_the_replay():
    assert resolve_start_ns(None, FIRST, END) == FIRST
    assert resolve_start_ns("end", FIRST, END) == END
    assert resolve_start_ns("+14d", FIRST, END) == FIRST + 14 * 86_400 * 10**9
    assert resolve_start_ns("+1.5h", FIRST, END) == FIRST + 5400 * 10**9
    assert resolve_start_ns("2025-04-01T13:30:00Z", FIRST, END) == to_ns(datetime(2025, 4, 1, 13, 30, tzinfo=timezone.utc))
    assert resolve_start_ns(datetime(2025, 4, 1, 9, 30, tzinfo=NEW_YORK), FIRST, END) == to_ns(datetime(2025, 4, 1, 13, 30, tzinfo=timezone.utc))


@pytest.mark.parametrize(
    "start, message",
    [
        ("2024-01-01T00:00:00Z", "outside the replay, which runs from 2025-03-16T22:00:00+00:00 to 2025-05-07T04:10:00+00:00"),
        ("+90d", "outside the replay"),
        ("yesterday", "'yesterday': expected an ISO time with an offset, '+<N>d', '+<N>h' or 'end'"),
        ("2025-04-01T13:30:00", "give the time with its offset"),
    ],
)
def test_a_bad_start_is_refused_by_name(start, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+").replace("(", r"\(")):
        resolve_start_ns(start, FIRST, END)


def test_a_naive_datetime_start_is_refused():
    with pytest.raises(DomainError):
        resolve_start_ns(datetime(2025, 4, 1, 13, 30), FIRST, END)


def test_history_serves_everything_before_a_start_inside_the_replay(sample):
    start = datetime(2025, 4, 2, 14, 0, tzinfo=timezone.utc)
    with SimulatorServer(start_time=start.isoformat(), rate_limits=False) as sim:
        SimulatorControl(sim.control_url).pause()
        assert sim.clock() == start
        served = pd.DataFrame(bars_between(sim.api_url, login(sim), datetime(2025, 3, 1, tzinfo=timezone.utc), start + timedelta(days=30)))
    expected = sample[sample["timestamp"] < start]
    assert len(served) == len(expected) > 3000, "the whole sample before the start, nothing after it"
    assert served["t"].iloc[-1] == "2025-04-02T13:55:00+00:00"
    assert served["v"].tolist() == expected["volume"].tolist() and served["c"].tolist() == expected["close"].tolist()


def test_start_at_the_end_serves_the_whole_sample_at_once(sample):
    with SimulatorServer(start_time="end", rate_limits=False) as sim:
        status = SimulatorControl(sim.control_url).status()
        assert status["finished"] and status["trades_published"] == 0
        served = bars_between(sim.api_url, login(sim), datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 6, 1, tzinfo=timezone.utc))
    assert len(served) == len(sample)


def test_start_time_of_the_synthetic_market_must_be_a_datetime():
    with pytest.raises(ValueError, match="expected an aware datetime"):
        SimulatorServer(synthetic=[MES], start_time="+1d")
    with pytest.raises(ValueError, match="shift_to_now moves a replay"):
        SimulatorServer(synthetic=[MES], shift_to_now=True)


# --------------------------------------------------------------------------- the shift to now


def test_shift_keeps_every_bar_on_its_weekday_and_new_york_time(sample):
    weeks = 87  # March–May 2025 (daylight time) to November 2026 (standard time): the UTC offset changes
    shifted = shift_bars_weeks(sample, weeks)
    before = pd.DatetimeIndex(sample["timestamp"]).tz_convert(NEW_YORK)
    after = pd.DatetimeIndex(shifted["timestamp"]).tz_convert(NEW_YORK)
    assert (after.tz_localize(None) - before.tz_localize(None) == pd.Timedelta(weeks=weeks)).all()
    assert (after.day_of_week == before.day_of_week).all() and (after.hour == before.hour).all()
    assert after[0] == pd.Timestamp("2026-11-15 18:00", tz=NEW_YORK), "the first session still opens at 18:00 New York"
    utc_first = pd.Timestamp(shifted["timestamp"].iloc[0])
    assert utc_first.hour == 23, "18:00 EST is 23:00 UTC (it was 22:00 UTC in daylight time)"
    columns = ["open", "high", "low", "close", "volume", "contract_id"]
    pd.testing.assert_frame_equal(shifted[columns], sample[columns])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=FIRST, max_value=END), st.integers(min_value=-(10**9) * 86_400 * 400, max_value=10**9 * 86_400 * 3000))
def test_weeks_to_now_lands_at_most_now_and_less_than_a_week_before(position, offset):
    now = position + offset
    weeks = weeks_to_now(position, now)
    landed = shift_ns(position, weeks)
    assert landed <= now < landed + NS_PER_WEEK + 3600 * 10**9  # an hour of slack across a clock change


def test_a_bar_shifted_into_a_clock_change_is_refused(sample):
    weekend = sample.iloc[:1].copy()
    weekend["timestamp"] = pd.Timestamp("2025-03-02 07:30", tz="UTC")  # 02:30 New York, one week before the spring change
    with pytest.raises(ValueError, match="New York clock change"):
        shift_bars_weeks(weekend, 1)


def test_replay_shifted_to_now_serves_the_last_seven_days(sample):
    with SimulatorServer(start_time="+14d", shift_to_now=True, rate_limits=False) as sim:
        now = datetime.now(timezone.utc)
        assert abs((sim.clock() - now).total_seconds()) < 5, "the clock starts at the present"
        assert sim.weeks_shifted == weeks_to_now(FIRST + 14 * 86_400 * 10**9, to_ns(now))
        # the recorded June 2025 month plays as the month that is front now (a gateway lists no expired month)
        (served,) = sim.contracts
        assert served == str(front_month_at(listed_quarters(now), now, CalendarRoll(), CalendarDays()).contract_id()) != MES
        last_week = bars_between(sim.api_url, login(sim), now - timedelta(days=7), now, served)
    assert len(last_week) > 1000, "five sessions of 5m bars, whatever the weekday"
    shifted = shift_bars_weeks(sample, sim.weeks_shifted)
    by_label = shifted.set_index(shifted["timestamp"].map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S+00:00")))
    for bar in last_week:
        row = by_label.loc[bar["t"]]
        assert (bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]) == (row.open, row.high, row.low, row.close, row.volume)


def listed_quarters(at: datetime) -> list[ContractMonth]:
    return [ContractMonth(y, m, "MES") for y in range(at.year - 1, at.year + 2) for m in (3, 6, 9, 12)]


def test_a_start_too_late_to_reach_now_is_refused():
    with pytest.raises(ValueError, match="choose an earlier start"):
        ReplaySource(default_replay_path(), start="end", shift_to_ns=to_ns(datetime(2025, 5, 20, tzinfo=timezone.utc)))


def test_make_dev_simulator_answers_the_last_seven_days():
    """The command `make dev` runs, run as a process: a client asking for the last 7 days of 5m bars gets them."""
    port = free_port()
    args = argparse.Namespace(host="127.0.0.1", simulator_port=port, speed="10", history_days=14.0)
    command = simulator_command(args)
    proc = subprocess.Popen([sys.executable, "-m", "projectx_pipeline", *command[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                token = requests.post(f"{url}/api/Auth/loginKey", json={"userName": "u", "apiKey": "k"}, timeout=2).json()["token"]
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.2)
        now = datetime.now(timezone.utc)
        listed = requests.post(
            f"{url}/api/Contract/search", json={"searchText": "MES", "live": False}, headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        (served,) = [c["id"] for c in listed.json()["contracts"]]
        assert len(bars_between(url, token, now - timedelta(days=7), now, served)) > 1000
    finally:
        proc.terminate()
        proc.wait(10)


def test_history_days_must_be_a_number_of_days():
    with pytest.raises(UsageError, match="--history-days -1"):
        simulator_command(argparse.Namespace(host="127.0.0.1", simulator_port=1, speed="10", history_days=-1.0))
