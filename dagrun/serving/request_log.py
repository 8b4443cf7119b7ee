"""The server log of an aiohttp application, with a request too malformed to parse as one warning line.

aiohttp logs a request its parser refuses (a NUL byte in a header, a broken request line) with a traceback,
though the client got its 400. `server_log` gives each face its own logger (not the shared "aiohttp.server",
which an embedding program's own servers use) with `MalformedRequestFilter` on it.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class MalformedRequestFilter(logging.Filter):
    """One bad request is one warning line that names what was wrong but not the offending line, which can
    hold the token. Other records, a bug's traceback included, pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if isinstance(refused, HttpProcessingError) and refused.code < 500:
            what = refused.message.strip().partition("\n")[0].partition(":")[0][:100]
            record.msg, record.args = "%s: malformed request (%d %s)", (record.getMessage(), refused.code, what)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def server_log(name: str) -> logging.Logger:
    """The logger `name` with the filter on it, once however often it is asked for."""
    log = logging.getLogger(name)
    if not any(isinstance(existing, MalformedRequestFilter) for existing in log.filters):
        log.addFilter(MalformedRequestFilter())
    return log
