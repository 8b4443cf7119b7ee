"""The dashboard's sign-in over HTTP: the token only through the form, a session cookie no script reads and
no other site sends, CSRF and origin checks on every state change made with it, a page's security headers,
and the Bearer API unchanged. The token never shows in a page, a URL or a log line."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from dagrun.api.dashboard import CONTENT_SECURITY_POLICY, _static_files
from dagrun.api.sessions import COOKIE, CSRF_HEADER, Sessions
from tests.api.conftest import GATED, Api

PAGES = ["/ui/runs", "/ui/runs/some-run", "/ui/submit", "/ui/workers"]


class Browser:
    """An aiohttp client that keeps cookies like a browser (even for 127.0.0.1) and sends no token."""

    def __init__(self, client: aiohttp.ClientSession) -> None:
        self.client = client
        self.csrf = ""

    async def sign_in(self, token: str) -> aiohttp.ClientResponse:
        response = await self.client.post(
            "/ui/login", data={"token": token, "next": "/ui/workers"}, allow_redirects=False
        )
        if response.status == 303:
            page = await self.client.get("/ui/runs")
            self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
        return response


@pytest.fixture
async def browser(api: Api) -> AsyncIterator[Browser]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(api.url, cookie_jar=jar) as client:
        yield Browser(client)


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_without_a_session_redirects_to_sign_in(browser: Browser, path: str) -> None:
    async with browser.client.get(path, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/ui/login?next=" + path.replace("/", "%2F")
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


async def test_the_api_without_the_cookie_or_token_is_401(browser: Browser) -> None:
    for path in ["/v1/runs", "/v1/workers", "/v1/runs/x/graph"]:
        async with browser.client.get(path) as response:
            assert response.status == 401


async def test_signing_in_sets_a_strict_http_only_cookie_and_opens_pages_and_api(
    api: Api, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await browser.sign_in(api.token)
    assert response.status == 303 and response.headers["Location"] == "/ui/workers"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/" in cookie and api.token not in cookie

    for path in PAGES:
        async with browser.client.get(path) as page:
            text = await page.text()
            assert page.status == 200 and page.content_type == "text/html"
            assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
            assert api.token not in text
            assert "<script>" not in text and " on" not in re.sub(r"\s+", " ", text).replace(" one", "")
    async with browser.client.get("/v1/runs") as listed:
        assert listed.status == 200
    assert api.token not in caplog.text


async def test_a_wrong_token_gets_the_form_again_with_401_and_no_cookie(api: Api, browser: Browser) -> None:
    response = await browser.sign_in("wrong-" + api.token)
    assert response.status == 401 and "Set-Cookie" not in response.headers
    assert "Wrong token." in await response.text()


@pytest.mark.parametrize(
    "asked", ["https://evil.example/", "//evil.example/ui/runs", "/ui/login", "/v1/runs", "/ui/\\evil"]
)
async def test_sign_in_never_sends_the_browser_off_the_dashboard(api: Api, browser: Browser, asked: str) -> None:
    response = await browser.client.post("/ui/login", data={"token": api.token, "next": asked}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/ui/runs"


async def test_a_state_change_with_the_cookie_needs_the_csrf_token_and_this_origin(api: Api, browser: Browser) -> None:
    await browser.sign_in(api.token)
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    cancel = f"/v1/runs/{run_id}/cancel"

    async with browser.client.post(cancel) as response:
        assert response.status == 403 and CSRF_HEADER in (await response.json())["error"]
    async with browser.client.post(cancel, headers={CSRF_HEADER: "forged"}) as response:
        assert response.status == 403
    cross_site = {CSRF_HEADER: browser.csrf, "Origin": "https://evil.example"}
    async with browser.client.post(cancel, headers=cross_site) as response:
        assert response.status == 403 and "another site" in (await response.json())["error"]
    same_site = {CSRF_HEADER: browser.csrf, "Origin": api.url}
    async with browser.client.post(cancel, headers=same_site) as response:
        assert response.status == 202


async def test_a_cross_site_sign_in_is_refused(api: Api, browser: Browser) -> None:
    response = await browser.client.post(
        "/ui/login", data={"token": api.token}, headers={"Origin": "https://evil.example"}, allow_redirects=False
    )
    assert response.status == 403 and "Set-Cookie" not in response.headers


async def test_signing_out_ends_the_session_at_once(api: Api, browser: Browser) -> None:
    await browser.sign_in(api.token)
    async with browser.client.post("/ui/logout", headers={CSRF_HEADER: browser.csrf}) as response:
        assert response.status == 200
        assert f'{COOKIE}=""' in response.headers["Set-Cookie"] or f"{COOKIE}=;" in response.headers["Set-Cookie"]
    async with browser.client.get("/v1/runs") as response:
        assert response.status == 401


async def test_a_stolen_cookie_is_dead_after_sign_out(api: Api, browser: Browser) -> None:
    await browser.sign_in(api.token)
    stolen = {c.key: c.value for c in browser.client.cookie_jar}[COOKIE]
    await browser.client.post("/ui/logout", headers={CSRF_HEADER: browser.csrf})
    async with (
        aiohttp.ClientSession(api.url) as other,
        other.get("/v1/runs", headers={"Cookie": f"{COOKIE}={stolen}"}) as response,
    ):
        assert response.status == 401


async def test_the_bearer_token_still_opens_the_api_but_not_a_page(api: Api) -> None:
    status, _ = await api.call("GET", "/v1/runs")
    assert status == 200
    async with api.client.get("/ui/runs", allow_redirects=False) as response:
        assert response.status == 303  # a page needs a session's CSRF token: sign in


async def test_static_files_are_public_revalidated_and_never_outside_their_folder(browser: Browser) -> None:
    async with browser.client.get("/ui/static/common.js") as response:
        assert response.status == 200 and response.content_type == "text/javascript"
        etag = response.headers["ETag"]
    async with browser.client.get("/ui/static/common.js", headers={"If-None-Match": etag}) as response:
        assert response.status == 304
    served = dict(_static_files())
    for name in ["..%2F__init__.py", "..%2Fpages%2Fshell.html", ".hidden.js", "nothing.js", "shell.html"]:
        async with browser.client.get(URL(f"/ui/static/{name}", encoded=True)) as response:
            assert response.status == 404, name
    assert _static_files() == served  # names asked for are not remembered: a public route holds no more memory


def test_sessions_expire_and_are_bounded() -> None:
    sessions = Sessions(lifetime_s=-1, max_sessions=3)
    expired = sessions.start()
    assert sessions.find(f"{COOKIE}={expired.session_id}") is None
    sessions = Sessions(max_sessions=3)
    first = sessions.start()
    for _ in range(3):
        sessions.start()
    assert len(sessions) == 3 and sessions.find(f"{COOKIE}={first.session_id}") is None
    assert sessions.find('bad"cookie; ;;') is None and sessions.find(None) is None
