"""Errors raised by the gateway client, and the text hygiene every gateway message goes through.

Every message built here names the endpoint and what went wrong, and never carries a token or
an API key: `redact` scrubs bearer tokens, JWTs and `access_token=` query values out of any
text that reaches an exception or a log line.
"""

from __future__ import annotations

from ..logs import redact_tokens
from .protocol import HISTORY_ENDPOINT, LOGIN_ENDPOINT, SEARCH_BY_ID_ENDPOINT, VALIDATE_ENDPOINT

# Error-code meanings per endpoint, from the gateway documentation (docs/projectx-gateway-api.md).
ERROR_MEANINGS: dict[str, dict[int, str]] = {
    LOGIN_ENDPOINT: {
        1: "user not found",
        2: "password verification failed",
        3: "invalid credentials",
        4: "app not found",
        5: "app verification failed",
        6: "invalid device",
        7: "agreements not signed",
        8: "unknown error",
        9: "API subscription not found",
        10: "API-key authentication disabled",
    },
    VALIDATE_ENDPOINT: {
        1: "invalid session",
        2: "session not found",
        3: "expired token",
        4: "unknown error",
    },
    SEARCH_BY_ID_ENDPOINT: {
        1: "contract not found",
    },
    HISTORY_ENDPOINT: {
        1: "contract not found",
        2: "unit invalid",
        3: "unit number invalid",
        4: "limit invalid",
    },
}

# one set of token patterns for the whole platform (the log filter uses the same)
redact = redact_tokens


def meaning_of(endpoint: str, error_code: object) -> str:
    if error_code == 0:
        return "success"
    if not isinstance(error_code, int):
        # the documented codes are integers; an untrusted list or object code made dict.get raise TypeError
        return "undocumented error code"
    return ERROR_MEANINGS.get(endpoint, {}).get(error_code, "undocumented error code")


class GatewayClientError(Exception):
    """Base class of everything the gateway client raises."""


class GatewayConfigError(GatewayClientError, ValueError):
    """Configuration that cannot work (a malformed URL, ...); the message names the setting."""


class GatewayError(GatewayClientError):
    """The gateway answered with an envelope `success: false` (HTTP 200, a logical failure)."""

    def __init__(self, endpoint: str, error_code: object, meaning: str, error_message: object):
        self.endpoint = endpoint
        self.error_code = error_code
        self.meaning = meaning
        self.error_message = None if error_message is None else redact(error_message)
        detail = f": {self.error_message}" if self.error_message else ""
        super().__init__(f"{endpoint} failed with error code {error_code} ({meaning}){detail}")

    @classmethod
    def from_envelope(cls, endpoint: str, envelope: dict) -> GatewayError:
        code = envelope.get("errorCode")
        return cls(endpoint, code, meaning_of(endpoint, code), envelope.get("errorMessage"))


class GatewayHTTPError(GatewayClientError):
    """An HTTP status the client does not retry (400, 403, 404, a 401 that survived a re-login)."""

    def __init__(self, endpoint: str, status: int, detail: str = ""):
        self.endpoint = endpoint
        self.status = status
        self.detail = redact(detail)[:300]
        suffix = f": {self.detail}" if self.detail else ""
        super().__init__(f"{endpoint} failed with HTTP {status}{suffix}")


class GatewayRetriesExhausted(GatewayClientError):
    """Every retry of a request met a 429, a 5xx or a connection failure."""

    def __init__(self, endpoint: str, attempts: int, last_status: int | None, last_error: str):
        self.endpoint = endpoint
        self.attempts = attempts
        self.last_status = last_status
        self.last_error = redact(last_error)[:300]
        what = f"HTTP {last_status}" if last_status is not None else self.last_error
        super().__init__(f"{endpoint} still failing after {attempts} attempts, last: {what}")


class GatewayResponseError(GatewayClientError):
    """A successful envelope whose payload is missing or malformed."""

    def __init__(self, endpoint: str, detail: str):
        self.endpoint = endpoint
        self.detail = redact(detail)[:300]
        super().__init__(f"{endpoint} returned an unusable response: {self.detail}")
