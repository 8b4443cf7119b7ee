"""Signing in and out of the dashboard in a real browser."""

from __future__ import annotations

import pytest

from tests.ui.conftest import Dashboard

pytestmark = pytest.mark.browser


async def test_a_browser_signs_in_with_the_token_and_out_again(dashboard: Dashboard) -> None:
    page = dashboard.page
    assert page.url.endswith("/ui/runs")
    cookies = await page.context.cookies()
    session = next(cookie for cookie in cookies if cookie["name"] == "dagrun_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert dashboard.token not in await page.content()
    assert not await page.evaluate("document.cookie")  # no script can read the session

    await page.goto("/ui/submit")  # a page that reads nothing on a clock: no request of its is refused after
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/ui/login")
    await page.goto("/ui/runs")
    await page.wait_for_url("**/ui/login?next=%2Fui%2Fruns")


async def test_a_wrong_token_is_refused_on_the_page(dashboard: Dashboard) -> None:
    page = await dashboard.new_page(signed_in=False)
    await page.goto("/ui/workers")
    await page.get_by_label("API token").fill("not the token at all")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").filter(has_text="Wrong token").wait_for()
    dashboard.console_errors.clear()  # the browser reports the 401 of the refused sign-in itself
