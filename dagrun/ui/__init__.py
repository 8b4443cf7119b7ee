"""The dashboard's files: HTML page shells (`pages/`) and the scripts and styles they load (`static/`).

Nothing here imports dagrun: the pages are shells that the API server fills with a title and the session's
CSRF token (`render`), and their scripts draw everything else from the REST API under /v1, the same API
every other client uses. No build step: the scripts are plain ES modules, the styles plain CSS.
"""

from __future__ import annotations

import functools
import html
from importlib import resources
from string import Template

STATIC = resources.files(__name__) / "static"
PAGES = resources.files(__name__) / "pages"


def render(page: str, *, title: str, csrf: str = "", **values: str) -> str:
    """The page `page` (a fragment in `pages/`) inside the shell; every value is HTML-escaped."""
    escaped = {name: html.escape(value) for name, value in values.items()}
    body = _template(page).substitute(escaped)
    shell = "login_shell" if page == "login" else "shell"
    return _template(shell).substitute(title=html.escape(title), csrf=html.escape(csrf), body=body, page=page)


@functools.cache
def _template(name: str) -> Template:
    return Template((PAGES / f"{name}.html").read_text(encoding="utf-8"))
