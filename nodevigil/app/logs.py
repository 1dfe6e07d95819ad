"""The process's log: text for a terminal, or one JSON object per line for a log shipper.

``--log-format json`` writes each record as ``{"time", "level", "logger", "message"}`` (plus
``exception`` with the traceback when there is one), so Loki, Elasticsearch or journald's
JSON readers take it without a parsing rule, and a multi-line traceback stays one line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the time is RFC 3339 in UTC, to the millisecond."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, str] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a line stays 7-bit whatever a message holds (a node's odd name).
        return json.dumps(line, ensure_ascii=True)


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) at ``level``, as ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)  # a Python warning is a JSON line too, not raw stderr
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    # basicConfig's rule: only when nothing configured the root logger yet (pytest's caplog,
    # an embedding program), so a caller's own handlers are left alone.
    logging.basicConfig(level=level, handlers=[handler])
