"""The API's guard: the token check and size limit before any body is read, and errors as JSON.

A request is let in with the Bearer token, or with a dashboard session's cookie (`dagrun.api.sessions`):
then a request that changes state must also carry the session's CSRF token and come from this server's
origin. Without either, a dashboard page redirects to the sign-in page and anything else is 401.

Every response that is not a success is ``{"error": message}`` (plus ``problems`` for an invalid flow):
the router's 404/405, refusals, dagrun errors mapped to their status, and a bug as a bare 500 whose
traceback goes to the log only. The token is compared in constant time and never logged; the first
request that carries it (or a session) takes its connection out of the lobby (`dagrun.serving.lobby`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
import pydantic
from aiohttp import web
from aiohttp.typedefs import Middleware

from dagrun.api.sessions import CSRF_HEADER, SAFE_METHODS, Session, Sessions, csrf_matches, same_origin
from dagrun.errors import ControlError, DagrunError, FlowError, RunNotFound
from dagrun.flow.problems import is_too_deep, nesting_path
from dagrun.flow.references import Loc
from dagrun.serving.lobby import AUTHORIZATION, Lobby, is_authorized

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=pydantic.BaseModel)
TooDeep = Callable[[Loc], DagrunError]  # where a request body nests too deep -> the error to answer with

# the only paths served without the token or a session
PUBLIC_PATHS = frozenset({"/health", "/ui/login", "/favicon.ico"})
PUBLIC_PREFIXES = ("/ui/static/",)  # the dashboard's scripts and styles: no data, and the sign-in page needs them
UI_PREFIX = "/ui"


class ApiError(Exception):
    """A refusal a handler raises; the guard turns it into ``{"error": message}`` with `status`."""

    def __init__(
        self, status: HTTPStatus, message: str, *, close: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.close = close  # the body was not read: the connection cannot be reused
        self.headers = headers or {}
        super().__init__(message)


def json_response(body: Any, status: int = HTTPStatus.OK, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, *, close: bool = False, **extra: Any) -> web.Response:
    response = json_response({"error": message, **extra}, status)
    if close:
        response.force_close()
    return response


def guard(token: str, *, max_body_bytes: int, lobby: Lobby, sessions: Sessions) -> Middleware:
    """The middleware: the token or a session (else 401, or a redirect to sign in for a dashboard page),
    413 for a declared body over the limit, then the handler with its errors rendered as JSON. A request
    with the token or a session takes its connection out of `lobby`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        with lobby.serving(request.transport):
            if is_authorized(request.headers.getall(AUTHORIZATION, []), token):
                lobby.leave(request.transport)
            elif (session := sessions.find(request.headers.get("Cookie"))) is not None:
                lobby.leave(request.transport)
                refused = _cross_site(request, session)
                if refused is not None:
                    return refused
            elif not _is_public(request.path):
                return _unauthorized(request)
            elif request.method not in SAFE_METHODS and not same_origin(request.headers.get("Origin"), request.host):
                return _refused_cross_site(request, "came from another site")
            if request.content_length is not None and request.content_length > max_body_bytes:
                message = f"request body of {request.content_length} bytes is over the {max_body_bytes}-byte limit"
                return error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message, close=True)
            return await _handle(request, handler)

    return middleware


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _unauthorized(request: web.Request) -> web.Response:
    if request.method in SAFE_METHODS and (request.path == UI_PREFIX or request.path.startswith(UI_PREFIX + "/")):
        return to_sign_in(request.path)
    logger.warning("refused %s %s from %s: no valid token", request.method, request.path, request.remote)
    response = error_response(HTTPStatus.UNAUTHORIZED, "missing or wrong token", close=True)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def to_sign_in(path: str) -> web.Response:
    """A redirect to the dashboard's sign-in page, which comes back to `path` once signed in."""
    location = f"{UI_PREFIX}/login?{urlencode({'next': path})}"
    return web.Response(status=HTTPStatus.SEE_OTHER, headers={"Location": location})


def _cross_site(request: web.Request, session: Session) -> web.Response | None:
    """A refusal for a request with a session's cookie that changes state without the session's CSRF token or
    from another origin; None when it may go on."""
    if request.method in SAFE_METHODS:
        return None
    if not same_origin(request.headers.get("Origin"), request.host):
        return _refused_cross_site(request, "came from another site")
    if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
        return _refused_cross_site(request, f"has no valid {CSRF_HEADER} header")
    return None


def _refused_cross_site(request: web.Request, why: str) -> web.Response:
    logger.warning("refused %s %s from %s: it %s", request.method, request.path, request.remote, why)
    return error_response(HTTPStatus.FORBIDDEN, f"refused: the request {why}")


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, with its refusals and errors as JSON."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.message, close=exc.close)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        return _http_error(request, exc)
    except DagrunError as exc:
        return _dagrun_error(request, exc)
    except Exception:  # a bug: the client gets one line, the log gets the traceback
        logger.exception("%s %s failed", request.method, request.path)
        return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server's log")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """The router's refusals (and aiohttp's own) as JSON, keeping headers such as Allow."""
    if exc.status == HTTPStatus.NOT_FOUND:
        message = f"no route {request.method} {request.path}"
    elif exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = exc.headers.get("Allow", "")
        message = f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
    else:
        message = exc.text or exc.reason
    response = error_response(exc.status, message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _dagrun_error(request: web.Request, exc: DagrunError) -> web.Response:
    if isinstance(exc, RunNotFound):
        return error_response(HTTPStatus.NOT_FOUND, str(exc))
    if isinstance(exc, ControlError):
        return error_response(HTTPStatus.CONFLICT, str(exc))
    if isinstance(exc, FlowError):
        count = len(exc.problems)
        problems = [{"path": problem.path, "message": problem.message} for problem in exc.problems]
        message = f"invalid flow: {count} problem{'s' if count != 1 else ''}"
        return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, message, problems=problems)
    # The store or an executor failed: the server is fine, what it depends on is not.
    logger.error("%s %s failed: %s", request.method, request.path, exc)
    return error_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))


async def read_model(
    request: web.Request, model: type[M], *, too_deep: TooDeep | None = None, required: bool = True
) -> M:
    """The request's JSON body as `model` (no body: `{}`, unless `required`); ApiError 413 past the size
    limit (a chunked body), 400 for malformed JSON or a body the model refuses. A body nested too deep for
    the JSON parser is malformed, unless `too_deep` turns the place where it is (a JSON path in the body)
    into an error to raise."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        message = f"request body is over the {request.client_max_size}-byte limit"
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message, close=True) from exc
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        if too_deep is not None and is_too_deep(exc):
            raise too_deep(nesting_path(body.decode(errors="replace"), exc.pos)) from exc
        raise ApiError(HTTPStatus.BAD_REQUEST, f"request body: malformed JSON: {exc}") from exc
    if document is None and not required and not body:
        document = {}
    if document is None:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"request body: expected a JSON object ({model.__name__})")
    return validated(model, document, "request body")


def read_query(request: web.Request, model: type[M]) -> M:
    """The query string as `model`; ApiError 400 for an unknown parameter or a bad value."""
    return validated(model, dict(request.query), "query")


def validated(model: type[M], document: Any, where: str) -> M:
    try:
        return model.model_validate(document)
    except pydantic.ValidationError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{where}: {describe(exc)}") from exc


def describe(exc: pydantic.ValidationError) -> str:
    """Pydantic's errors on one line: ``flow: Field required; extra: unknown field``."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
