"""The ProjectX Gateway's wire protocol, as both sides of it in this project speak it.

The client (`client.py`, `ratelimit.py`, `hub.py`, `errors.py`) and the simulator (`simulator/`)
take their endpoint names, hub path, hub methods and events, rate budgets, bar cap and
timestamp layout from here, so that the two cannot drift apart. The protocol itself is
described in `docs/projectx-gateway-api.md`.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- REST

# Endpoint names as the client and the error tables name them; the URL path is
# f"{API_ROOT}/{endpoint}".
API_ROOT = "/api"
LOGIN_ENDPOINT = "Auth/loginKey"
VALIDATE_ENDPOINT = "Auth/validate"
SEARCH_ENDPOINT = "Contract/search"
SEARCH_BY_ID_ENDPOINT = "Contract/searchById"
HISTORY_ENDPOINT = "History/retrieveBars"
LOGOUT_ENDPOINT = "Auth/logout"
AVAILABLE_CONTRACTS_ENDPOINT = "Contract/available"
ACCOUNT_SEARCH_ENDPOINT = "Account/search"
PING_ENDPOINT = "Status/ping"  # the one GET

# Rate budgets, (requests, per seconds): History/retrieveBars has its own, every other
# endpoint the default one.
HISTORY_BUDGET = (50, 30.0)
DEFAULT_BUDGET = (200, 60.0)

# retrieveBars answers at most this many bars per request (the most recent of the window).
MAX_BARS_PER_REQUEST = 20_000

# --------------------------------------------------------------------------- market hub

MARKET_HUB_PATH = "/hubs/market"
USER_HUB_PATH = "/hubs/user"
NEGOTIATE_SUFFIX = "/negotiate"  # POST <hub>/negotiate[?negotiateVersion=1]
RECORD_SEPARATOR = "\x1e"  # ends every SignalR JSON record

# Client → server invocations, each taking one argument: the contract id.
SUBSCRIBE_TRADES = "SubscribeContractTrades"
UNSUBSCRIBE_TRADES = "UnsubscribeContractTrades"
SUBSCRIBE_QUOTES = "SubscribeContractQuotes"
UNSUBSCRIBE_QUOTES = "UnsubscribeContractQuotes"
SUBSCRIBE_DEPTH = "SubscribeContractMarketDepth"
UNSUBSCRIBE_DEPTH = "UnsubscribeContractMarketDepth"

# User hub invocations: SubscribeAccounts takes no argument, the others one account id.
SUBSCRIBE_ACCOUNTS = "SubscribeAccounts"
UNSUBSCRIBE_ACCOUNTS = "UnsubscribeAccounts"
SUBSCRIBE_ORDERS = "SubscribeOrders"
UNSUBSCRIBE_ORDERS = "UnsubscribeOrders"
SUBSCRIBE_POSITIONS = "SubscribePositions"
UNSUBSCRIBE_POSITIONS = "UnsubscribePositions"
SUBSCRIBE_ACCOUNT_TRADES = "SubscribeTrades"
UNSUBSCRIBE_ACCOUNT_TRADES = "UnsubscribeTrades"

# Server → client events; all but the logout carry the arguments (contractId, data).
TRADE_EVENT = "GatewayTrade"
QUOTE_EVENT = "GatewayQuote"
DEPTH_EVENT = "GatewayDepth"
LOGOUT_EVENT = "GatewayLogout"

# --------------------------------------------------------------------------- timestamps

# The date-and-time part of every ISO-8601 timestamp on the wire, before fraction and offset.
ISO_SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%S"
