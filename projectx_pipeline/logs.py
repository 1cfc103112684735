"""Structured logs: one line per event, `key=value` (or JSON), never containing a secret.

Every record passes a redaction filter installed on the root handler, so a secret that reaches
a message by any path (an exception text, a URL with a token, a library's own log line) is
replaced before it is written. Secrets are registered from the environment at start.
Platform loggers (`get_logger`) carry the same filter on the logger itself, so a handler that
another framework attaches under "projectx" sees only redacted records too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from datetime import datetime, timezone

from .storage.urls import URL_PASSWORD, url_password

_SECRET_ENV = ("PROJECTX_API_KEY", "DATABASE_URL", "DAGSTER_PG_URL")
# Token-shaped secrets, wherever they appear (a hub URL, an Authorization header, a JWT).
_TOKEN_PATTERNS = [
    (re.compile(r"(access_token=)[^&\s'\"]*", re.IGNORECASE), r"\1***"),
    (re.compile(r"(Bearer\s+)[^\s'\",]+", re.IGNORECASE), r"\1***"),
    # signalrcore logs the raw token it obtained from the token factory under this phrase
    (re.compile(r"(auth function result\s+)\S+", re.IGNORECASE), r"\1***"),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "***"),
]
_PATTERNS = _TOKEN_PATTERNS + [
    (URL_PASSWORD, r"\1:***@"),
    (re.compile(r"(\"?(?:apiKey|api_key|token|newToken|password)\"?\s*[:=]\s*\"?)[^\"\s,}&]+"), r"\1***"),
]
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact this exact value wherever it appears in a log line."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def register_env_secrets(environ=os.environ) -> None:
    for name in _SECRET_ENV:
        value = environ.get(name)
        register_secret(value)
        if value:
            # a database URL's password on its own, too
            register_secret(url_password(value))


def redact_tokens(text: object) -> str:
    """`text` as a string with every token-like secret replaced by `***`."""
    out = str(text)
    for pattern, repl in _TOKEN_PATTERNS:
        out = pattern.sub(repl, out)
    return out


def kv(event: str, **fields: object) -> str:
    """A structured log message: `event=<event> key=value ...`, secrets redacted (token shapes,
    URL passwords and every registered secret: Dagster's `context.log` bypasses the logging
    filters, so the message itself must already be clean).

    Values containing spaces, quotes, equals signs or line breaks are quoted (line breaks escaped)
    so that the line stays one line and machine-splittable."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = redact(str(value))
        if not text or any(c in text for c in ' "=\n\r\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    """Redacts a record's message and traceback in place, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a record that cannot be formatted is left to the handler to report
            return True
        if record.exc_info and record.exc_info[1] is not None:
            # render the traceback now so the formatter cannot print an unredacted copy
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg, record.args = redact(msg), None
        return True


_LOGGER_FILTER = RedactingFilter()
_logger_lock = threading.Lock()


def get_logger(name: str) -> logging.Logger:
    """The platform logger `name` (under "projectx.", or a library's logger the platform must keep
    clean, such as signalrcore's), with a RedactingFilter on the logger itself.

    A logger's filters run on the records it creates before any handler sees them, so a handler
    attached to "projectx" by someone else (Dagster's managed_python_loggers) never gets a secret;
    configure_logging's root-handler filter alone would not cover such a handler."""
    logger = logging.getLogger(name)
    with _logger_lock:
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(_LOGGER_FILTER)
    return logger


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_text:
            line += " exc=" + json.dumps(record.exc_text)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc)


def configure_logging(level: str | None = None, *, fmt: str | None = None, stream=None) -> None:
    """Root logging for a service: key=value lines (PROJECTX_LOG_FORMAT=json for JSON)."""
    register_env_secrets()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    use_json = (fmt or os.environ.get("PROJECTX_LOG_FORMAT", "kv")) == "json"
    handler.setFormatter(JsonFormatter() if use_json else KeyValueFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("PROJECTX_LOG_LEVEL", "INFO")).upper())
    # signalrcore logs every frame at DEBUG, including its URL with the token
    logging.getLogger("SignalRCoreClient").setLevel(logging.WARNING)


class LogThrottle:
    """At most `burst` lines per `period` seconds (a flood of bad input must not flood the log);
    says how many were suppressed in between."""

    def __init__(self, burst: int = 10, period: float = 10.0):
        self._burst, self._period = burst, period
        self._window_start = 0.0
        self._in_window = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def admit(self) -> tuple[bool, int]:
        """(whether to log this line, how many lines were suppressed since the last one logged)."""
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self._period:
                self._window_start, self._in_window = now, 0
            if self._in_window >= self._burst:
                self._suppressed += 1
                return False, 0
            self._in_window += 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed
