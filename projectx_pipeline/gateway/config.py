"""Where the gateway is and who logs in: the real ProjectX gateway or the local simulator."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..settings import GATEWAY_SIMULATOR, choose_gateway
from .errors import GatewayConfigError

REAL_API_URL = "https://api.topstepx.com"
REAL_RTC_URL = "https://rtc.topstepx.com"
SIMULATOR_URL = "http://127.0.0.1:5080"
SIMULATOR_CREDENTIAL = "simulator"
from .protocol import MARKET_HUB_PATH  # noqa: E402 - kept where the constant was defined


def validate_url(name: str, value: object) -> str:
    """`value` as an http(s) URL without a trailing slash; the error names the setting `name`."""
    if not isinstance(value, str) or not value.strip():
        raise GatewayConfigError(f"{name}={value!r} is not a URL: expected http(s)://host[:port]")
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise GatewayConfigError(f"{name}={value!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayConfigError(f"{name}={value!r} is not a valid URL: expected http(s)://host[:port]")
    if parts.query or parts.fragment:
        raise GatewayConfigError(f"{name}={value!r} must not carry a query string or fragment")
    return url


@dataclass(frozen=True)
class GatewayConfig:
    """Hosts and credentials. `rtc_url` is the host that serves `/hubs/market`."""

    api_url: str
    rtc_url: str
    username: str
    api_key: str
    use_simulator: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_url", validate_url("api_url", self.api_url))
        object.__setattr__(self, "rtc_url", validate_url("rtc_url", self.rtc_url))
        if not isinstance(self.username, str) or not self.username:
            raise GatewayConfigError("username must be a non-empty string")
        if not isinstance(self.api_key, str) or not self.api_key:
            raise GatewayConfigError("api_key must be a non-empty string")

    def __repr__(self) -> str:
        return (
            f"GatewayConfig(api_url={self.api_url!r}, rtc_url={self.rtc_url!r}, "
            f"username={self.username!r}, api_key='***', use_simulator={self.use_simulator})"
        )

    __str__ = __repr__

    @property
    def market_hub_url(self) -> str:
        return self.rtc_url + MARKET_HUB_PATH

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, gateway: str | None = None) -> GatewayConfig:
        """Hosts and credentials of `gateway` (`Settings.gateway`; by default decided from
        `environ` by `settings.choose_gateway`, the one place that choice is made).

        PROJECTX_API_URL and PROJECTX_RTC_URL override the hosts in either case."""
        username = environ.get("PROJECTX_USERNAME", "").strip()
        api_key = environ.get("PROJECTX_API_KEY", "").strip()
        use_simulator = (gateway or choose_gateway(environ)) == GATEWAY_SIMULATOR
        default_api, default_rtc = (SIMULATOR_URL, SIMULATOR_URL) if use_simulator else (REAL_API_URL, REAL_RTC_URL)
        api_url = validate_url("PROJECTX_API_URL", environ.get("PROJECTX_API_URL") or default_api)
        rtc_url = validate_url("PROJECTX_RTC_URL", environ.get("PROJECTX_RTC_URL") or default_rtc)
        if use_simulator:
            username = api_key = SIMULATOR_CREDENTIAL
        return cls(api_url=api_url, rtc_url=rtc_url, username=username, api_key=api_key, use_simulator=use_simulator)
