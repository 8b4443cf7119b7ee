"""The wire both sides of the WebSocket transport speak: the frame layout and the connection settings.

A frame is binary: ``id`` (ID_BYTES, big-endian, chosen by the client) + ``kind`` (1 byte) + payload, so
a message shorter than HEADER_BYTES carries no frame. The kinds and what each payload holds are drawn in
the package docstring. Client and server open connections with the same keepalive and handshake timeouts
and log websockets' own lines through `wire_logger`, which masks the Authorization header: the token
never reaches a log line.
"""

from __future__ import annotations

import logging

from dagrun.serving.lobby import AUTHORIZATION


class AuthorizationFilter(logging.Filter):
    """Masks the value of an Authorization header in records like ``"> %s: %s" % (name, value)``,
    which is how websockets logs handshake headers at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == AUTHORIZATION.lower():
            record.args = (args[0], "***")
        return True


wire_logger = logging.getLogger("executors.websocket.wire")  # websockets' own log lines
wire_logger.addFilter(AuthorizationFilter())

ID_BYTES = 8
HEADER_BYTES = ID_BYTES + 1
REQUEST, CANCEL, WITHDRAW = b"Q", b"C", b"W"  # client -> worker
STARTED, TAKEN_BACK, RESULT, ERROR, BUSY, GOING_AWAY = b"S", b"T", b"R", b"E", b"B", b"G"  # worker -> client
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
OPEN_TIMEOUT_S = 10.0
