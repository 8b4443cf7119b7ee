"""Browser sessions: how the dashboard signs in without the token ever reaching a page, a URL or a log.

`/ui/login` takes the API token once (a form POST) and answers with a session cookie: a random id, HttpOnly
(no script reads it), SameSite=Strict (no other site's page sends it), Path=/ (an `EventSource` on /v1
sends it). The API accepts the cookie as it accepts the Bearer token, but a request that changes state and
came with the cookie must also carry the session's CSRF token in `X-CSRF-Token` (the dashboard's pages
hold it in a meta tag), and an `Origin`, when the browser sends one, that is this server's. Sessions live in
the server's memory: a restart signs browsers out, and signing out ends the session at once.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import OrderedDict
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from dagrun.serving.lobby import token_matches

COOKIE = "dagrun_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_S = 12 * 3600  # a browser signs in again after this long
MAX_SESSIONS = 10_000  # past this, the oldest session ends: a flood of sign-ins cannot grow memory
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    csrf: str  # what the session's pages send back in X-CSRF-Token
    expires_at: float


class Sessions:
    """The signed-in browsers of one server."""

    def __init__(self, *, lifetime_s: float = SESSION_S, max_sessions: int = MAX_SESSIONS) -> None:
        self._lifetime_s = lifetime_s
        self._max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def lifetime_s(self) -> float:
        return self._lifetime_s

    def start(self) -> Session:
        """A new session (after the token was checked)."""
        while len(self._sessions) >= self._max_sessions:
            self._sessions.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time() + self._lifetime_s)
        self._sessions[session.session_id] = session
        return session

    def find(self, cookie_header: str | None) -> Session | None:
        """The live session named by a request's Cookie header, if any."""
        session_id = session_cookie(cookie_header)
        if session_id is None:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= time.time():
            del self._sessions[session_id]
            return None
        return session

    def end(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)


def session_cookie(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:  # a malformed Cookie header names no session
        return None
    morsel = cookies.get(COOKIE)
    return morsel.value if morsel is not None else None


def csrf_matches(session: Session, presented: str | None) -> bool:
    return presented is not None and token_matches(presented, session.csrf)


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's Origin header is this server (its Host; the scheme may differ behind a proxy that
    ends TLS). No Origin: a client that is not a browser, or a browser's same-origin request."""
    if origin is None:
        return True
    return host is not None and urlsplit(origin).netloc == host
