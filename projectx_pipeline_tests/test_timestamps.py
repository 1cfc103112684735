"""The one naive-time rule of domain/timestamps.py, for every form a time arrives in."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.timestamps import aware_timestamp, from_ns, parse_iso_time, timestamps_ns, to_ns, utc, utc_series

AWARE = datetime(2025, 3, 17, 13, 30, tzinfo=timezone.utc)
NAIVE = datetime(2025, 3, 17, 13, 30)
AWARE_NS = to_ns(AWARE)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([AWARE, AWARE], dtype=object),
        pd.Series(["2025-03-17T13:30:00Z", "2025-03-17T09:30:00-04:00"], dtype=object),
        pd.Series([AWARE_NS, AWARE_NS]),
        pd.Series(pd.to_datetime([AWARE, AWARE], utc=True)),
    ],
    ids=["datetimes", "iso-strings", "ns-counts", "aware-dtype"],
)
def test_aware_columns_and_ns_counts_convert_to_the_same_instants(column):
    assert timestamps_ns(column).tolist() == [AWARE_NS, AWARE_NS]
    assert str(utc_series(column).dtype) == "datetime64[ns, UTC]"
    assert utc_series(column).iloc[0] == pd.Timestamp(AWARE)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([AWARE, NAIVE], dtype=object),
        pd.Series(["2025-03-17T13:30:00Z", "2025-03-17T13:30:00"], dtype=object),
        pd.Series(pd.to_datetime([NAIVE])),
    ],
    ids=["naive-datetime", "iso-without-offset", "naive-dtype"],
)
def test_a_naive_time_is_refused_everywhere_with_one_wording(column):
    for convert in (timestamps_ns, utc_series):
        with pytest.raises(DomainError, match=r"^naive timestamp .*: expected a timezone-aware UTC time$"):
            convert(column)


def test_scalar_forms_follow_the_same_rule():
    assert utc(AWARE) == AWARE and from_ns(to_ns(AWARE)) == AWARE
    assert aware_timestamp(AWARE).value == AWARE_NS
    assert aware_timestamp(None) is None
    for call in (
        lambda: utc(NAIVE),
        lambda: to_ns(NAIVE),
        lambda: aware_timestamp(NAIVE),
        lambda: aware_timestamp(np.datetime64("2025-03-17T13:30")),
    ):
        with pytest.raises(DomainError, match="naive"):
            call()


def test_empty_and_missing_values_are_not_errors():
    assert timestamps_ns(pd.Series([], dtype=object)).size == 0
    assert utc_series(pd.Series([], dtype=object)).empty
    assert timestamps_ns(pd.Series([AWARE, None], dtype=object)).tolist() == [AWARE_NS, np.iinfo(np.int64).min]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-18T14:00:00Z", datetime(2025, 3, 18, 14, tzinfo=timezone.utc)),
        (" 2025-03-18T10:00:00-04:00 ", datetime(2025, 3, 18, 14, tzinfo=timezone.utc)),
        ("2025-03-18T14:00:00.250+00:00", datetime(2025, 3, 18, 14, 0, 0, 250_000, tzinfo=timezone.utc)),
    ],
)
def test_an_iso_time_with_its_offset_is_parsed_to_utc(text, expected):
    parsed = parse_iso_time(text, "as_of")
    assert parsed == expected and parsed.tzinfo == timezone.utc


def test_a_bad_or_naive_iso_time_is_refused_naming_what_and_the_value():
    with pytest.raises(DomainError, match=r"invalid --start 'soon': expected an ISO time with an offset or 'end', like 2025-03-18T14:00:00Z"):
        parse_iso_time("soon", "--start", " or 'end'")
    with pytest.raises(DomainError, match=r"invalid as_of '2025-03-18T14:00:00': give the time with its offset \(Z or \+00:00\)"):
        parse_iso_time("2025-03-18T14:00:00", "as_of")
