"""The ProjectX gateway: configuration, REST client, market-hub feed and hub event parsing."""

from .client import GatewayClient
from .config import GatewayConfig
from .errors import (
    GatewayClientError,
    GatewayConfigError,
    GatewayError,
    GatewayHTTPError,
    GatewayResponseError,
    GatewayRetriesExhausted,
)
from .events import EventLimits, HubEvent, Rejected, parse_quote_event, parse_timestamp, parse_trade_event
from .hub import MarketHub
from .ratelimit import RateBudget, RateLimiter

__all__ = [
    "EventLimits",
    "GatewayClient",
    "GatewayClientError",
    "GatewayConfig",
    "GatewayConfigError",
    "GatewayError",
    "GatewayHTTPError",
    "GatewayResponseError",
    "GatewayRetriesExhausted",
    "HubEvent",
    "MarketHub",
    "RateBudget",
    "RateLimiter",
    "Rejected",
    "parse_quote_event",
    "parse_timestamp",
    "parse_trade_event",
]
