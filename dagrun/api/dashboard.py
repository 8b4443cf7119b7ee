"""The dashboard's routes under /ui: sign-in and sign-out, the page shells, and their static files.

The pages are shells (`dagrun.ui.render`) whose scripts read and control runs through the REST API with
the session's cookie (`dagrun.api.sessions`); the guard admits them. Every /ui response carries a
Content-Security-Policy that allows nothing but this server's own scripts, styles and connections (no
inline script, no other origin, no framing), and no page is cached but the static files, revalidated.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from http import HTTPStatus
from pathlib import PurePosixPath

from aiohttp import web

from dagrun import ui
from dagrun.api.guard import UI_PREFIX, Handler, to_sign_in
from dagrun.api.sessions import COOKIE, Session, Sessions
from dagrun.serving.lobby import token_matches

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes a form's Origin "null", which the guard refuses
    "X-Frame-Options": "DENY",
}
HOME = f"{UI_PREFIX}/runs"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}


class Dashboard:
    """The /ui handlers of one server: `token` signs a browser in, `sessions` remembers it."""

    def __init__(self, token: str, sessions: Sessions) -> None:
        self._token = token
        self._sessions = sessions

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(UI_PREFIX, self.home)
        app.router.add_get(f"{UI_PREFIX}/", self.home)
        app.router.add_get(f"{UI_PREFIX}/login", self.login_page)
        app.router.add_post(f"{UI_PREFIX}/login", self.login)
        app.router.add_post(f"{UI_PREFIX}/logout", self.logout)
        app.router.add_get(HOME, self.page("runs", "Runs"))
        app.router.add_get(f"{UI_PREFIX}/runs/{{run_id}}", self.page("run", "Run"))
        app.router.add_get(f"{UI_PREFIX}/submit", self.page("submit", "Submit a flow"))
        app.router.add_get(f"{UI_PREFIX}/workers", self.page("workers", "Workers"))
        app.router.add_get(f"{UI_PREFIX}/static/{{name}}", self.static)
        app.router.add_get("/favicon.ico", self.favicon)  # what a browser asks for before it reads a page
        app.on_response_prepare.append(_secure)

    async def home(self, request: web.Request) -> web.Response:
        return _see_other(HOME)

    async def login_page(self, request: web.Request) -> web.Response:
        next_page = _next_page(request.query.get("next"))
        if self._session(request) is not None:
            return _see_other(next_page)
        return _login(next_page, message="")

    async def login(self, request: web.Request) -> web.Response:
        """Check the token from the form in constant time; a session cookie and on to the page asked for."""
        form = await request.post()
        presented, next_page = form.get("token"), _next_page(form.get("next"))
        if not isinstance(presented, str) or not token_matches(presented, self._token):
            logger.warning("refused a dashboard sign-in from %s: wrong token", request.remote)
            return _login(next_page, message="Wrong token.", status=HTTPStatus.UNAUTHORIZED)
        session = self._sessions.start()
        response = _see_other(next_page)
        response.set_cookie(
            COOKIE, session.session_id, path="/", httponly=True, samesite="Strict", secure=request.secure,
            max_age=int(self._sessions.lifetime_s),
        )  # fmt: skip
        logger.info("dashboard: a browser signed in from %s", request.remote)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is not None:
            self._sessions.end(session)
        response = web.json_response({"signed_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    def page(self, name: str, title: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            session = self._session(request)
            if session is None:  # the Bearer token opens the API, but a browser page needs a session's CSRF token
                return to_sign_in(request.path)
            text = ui.render(name, title=title, csrf=session.csrf, **request.match_info)
            return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})

        return handler

    def _session(self, request: web.Request) -> Session | None:
        """The session the request came with (the guard let it in by it, or by the Bearer token)."""
        return self._sessions.find(request.headers.get("Cookie"))

    async def favicon(self, request: web.Request) -> web.Response:
        return _see_other(f"{UI_PREFIX}/static/favicon.svg")

    async def static(self, request: web.Request) -> web.Response:
        """A file of `dagrun/ui/static`, revalidated by its ETag (the files change only with dagrun)."""
        found = _static_files().get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type, etag = found
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=HTTPStatus.NOT_MODIFIED, headers=headers)
        return web.Response(body=body, content_type=content_type, headers=headers)


@functools.cache
def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """Each file of `dagrun/ui/static` a page may load, by name: its body, content type and ETag. Read once,
    and the only names served: a request names a file of this table or gets 404, whatever its path says."""
    files = {}
    for resource in ui.STATIC.iterdir():
        content_type = STATIC_TYPES.get(PurePosixPath(resource.name).suffix)
        if content_type is not None and resource.is_file() and not resource.name.startswith("."):
            body = resource.read_bytes()
            files[resource.name] = (body, content_type, f'"{hashlib.sha256(body).hexdigest()[:16]}"')
    return files


def _next_page(asked: object) -> str:
    """Where to go after signing in: a dashboard page of this server, never another site."""
    if not isinstance(asked, str) or not asked.startswith(f"{UI_PREFIX}/") or asked.startswith(f"{UI_PREFIX}/login"):
        return HOME
    return HOME if "//" in asked or "\\" in asked else asked


def _login(next_page: str, *, message: str, status: int = HTTPStatus.OK) -> web.Response:
    text = ui.render("login", title="Sign in", message=message, next=next_page)
    return web.Response(text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})


def _see_other(location: str) -> web.Response:
    return web.Response(status=HTTPStatus.SEE_OTHER, headers={"Location": location})  # the browser GETs it


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == UI_PREFIX or request.path.startswith(f"{UI_PREFIX}/"):
        response.headers.update(SECURITY_HEADERS)
