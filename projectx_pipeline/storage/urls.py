"""Hiding the password of a database URL: the one helper the messages, the logs' redaction
filter and the settings' errors share. A leaf module (no psycopg2), so logging can use it."""

from __future__ import annotations

import re

# `scheme://user:password@`: the password, in a URL or anywhere in a line of text
URL_PASSWORD = re.compile(r"(://[^:/@\s]+):([^@\s]*)@")


def redact_url(url: str) -> str:
    """The URL (or a text holding URLs) with every password replaced by `***`. A value with
    userinfo in no recognisable form (a malformed URL) keeps only what follows its last `@`."""
    out = URL_PASSWORD.sub(r"\1:***@", url)
    if "@" in out and out == url and "://" not in url:
        return url.split("@")[-1]
    return out


def url_password(url: str) -> str | None:
    """The password in a database URL, if it has one (to register it as a secret)."""
    m = URL_PASSWORD.search(url)
    return m.group(2) if m and m.group(2) else None
