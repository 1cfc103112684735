"""The two coordination rules the tests run: a 1h trend start confirmed by a 15m one within an hour."""

from __future__ import annotations

from projectx_pipeline.domain.coordination import parse_rules

LONG = {
    "name": "long_1h_15m",
    "label": "long",
    "anchor": {"timeframe": "1h", "type": "uptrend"},
    "trigger": {"timeframe": "15m", "type": "uptrend"},
    "within_minutes": 60,
}
SHORT = {
    **LONG,
    "name": "short_1h_15m",
    "label": "short",
    "anchor": {"timeframe": "1h", "type": "downtrend"},
    "trigger": {"timeframe": "15m", "type": "downtrend"},
}
RULES = parse_rules([LONG, SHORT])
