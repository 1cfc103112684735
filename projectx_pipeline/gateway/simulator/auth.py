"""The simulator's logins: tokens (well-formed, unsigned JWTs) and the sessions behind them.

A missing, unknown or expired token gets HTTP 401 with an empty body, at REST and at the hub
upgrade alike. Tokens are valid `token_ttl` seconds; `Auth/validate` issues a new one and the
old one stays valid; `Auth/logout` ends the session of the token it was called with."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from aiohttp import web


def _jwt(user: str, expires_at: float) -> str:
    """An unsigned but well-formed JWT: clients can read `exp`, nothing checks the signature."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": user, "name": user, "iat": int(time.time()), "exp": int(expires_at), "jti": uuid.uuid4().hex, "iss": "projectx-simulator"}
    compact = (",", ":")
    return ".".join(
        (part(json.dumps(header, separators=compact).encode()), part(json.dumps(claims, separators=compact).encode()), part(secrets.token_bytes(32)))
    )


@dataclass
class Session:
    user: str
    expires_at: float  # epoch seconds
    token: str


class SessionStore:
    """The sessions of every token issued and not yet invalidated."""

    def __init__(self, token_ttl: float):
        self._token_ttl = float(token_ttl)
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def issue(self, user: str) -> str:
        expires_at = time.time() + self._token_ttl
        token = _jwt(user, expires_at)
        self._sessions[token] = Session(user, expires_at, token)
        return token

    def session_for(self, token: str | None) -> Session | None:
        session = self._sessions.get(token) if token else None
        if session is None or session.expires_at <= time.time():
            return None
        return session

    def revoke(self, token: str) -> None:
        """End one session: the token is refused from now on, at REST and at the hubs."""
        self._sessions.pop(token, None)

    def clear(self) -> None:
        """Invalidate every token issued so far."""
        self._sessions.clear()


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def unauthorized() -> web.Response:
    return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
