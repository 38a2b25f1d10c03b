"""JSON logs, one object per line, each carrying the request id of the request it belongs to.

Government intranets ship logs to a central collector that parses JSON; free text with Chinese
record numbers and multi-line tracebacks does not survive that. The request id is the same one the
API returns in ``X-Request-ID`` and the audit log stores, so an inspector's complaint ("my upload
failed, id ...") leads to the log lines and the audit rows of that request.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from hazardlens.audit import current_request_id

#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}  # uvicorn ANSI copy


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra, "exc"}``; never raises."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or current_request_id()
        if rid:
            body["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in body:
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


_configured = False


def configure_logging(level: str | int | None = None) -> None:
    """Send every logger (uvicorn's included) to stderr as JSON. Idempotent; the level comes from
    ``HAZARDLENS_LOG_LEVEL`` (default INFO)."""
    global _configured
    level = level or os.environ.get("HAZARDLENS_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()  # uvicorn's own plain-text handlers would print every line twice
        logger.propagate = True
    # The app logs every request with its id and timing; uvicorn's access line adds nothing.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    _configured = True


__all__ = ["JsonFormatter", "configure_logging"]
