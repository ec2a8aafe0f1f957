"""The browser kit finds what it claims to find, on pages made for the purpose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from browser_kit import PHONE, describe_violations, horizontal_overflow, resize

CLEAN = """<!doctype html><html lang="fr"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Connexion</title></head>
<body><main><h1>Connexion</h1><form><label for="login">Identifiant</label>
<input id="login" name="login"><button type="submit">Valider</button></form></main></body></html>"""

#: No language, an unlabelled field, an image without text, and a page wider than a phone.
BROKEN = """<!doctype html><html><head><meta charset="utf-8"><title>x</title></head>
<body><div style="width: 520px"><input name="login"><img src="/logo.png">
<span style="color:#aaa;background:#fff">tiny grey text</span></div></body></html>"""


def page_app(body: str) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body.encode("utf-8")]
    return app


def test_axe_finds_nothing_serious_on_a_clean_page(chromium: Any, axe: Any,
                                                   serve_wsgi: Any) -> None:
    chromium.get(serve_wsgi(page_app(CLEAN)))
    assert axe(chromium) == []


def test_axe_and_the_reflow_check_catch_a_broken_page(chromium: Any, axe: Any,
                                                      serve_wsgi: Any) -> None:
    chromium.get(serve_wsgi(page_app(BROKEN)))
    found = {v["id"] for v in axe(chromium)}
    assert {"label", "image-alt"} <= found, describe_violations(axe(chromium))
    resize(chromium, PHONE)
    assert chromium.execute_script("return window.innerWidth") == PHONE[0]
    assert horizontal_overflow(chromium) > 100


def test_a_screenshot_is_a_png(chromium: Any, serve_wsgi: Any, screenshot: Any) -> None:
    chromium.get(serve_wsgi(page_app(CLEAN)))
    assert screenshot(chromium, "clean").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


#: A page taller than a phone, and 385 px wide: less than the window, more than the
#: layout's width once the vertical scroll bar takes its share.
NARROW_OVERFLOW = """<!doctype html><html lang="fr"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>x</title></head>
<body style="margin:0"><div style="width: 385px; height: 3000px">long</div></body></html>"""


def test_the_reflow_check_sees_an_overflow_narrower_than_the_scroll_bar(
        chromium: Any, serve_wsgi: Any) -> None:
    """Measured against ``innerWidth`` (scroll bar included), this overflow went unseen."""
    chromium.get(serve_wsgi(page_app(NARROW_OVERFLOW)))
    resize(chromium, PHONE)
    bar = chromium.execute_script(
        "return window.innerWidth - document.documentElement.clientWidth")
    if bar == 0:
        pytest.skip("this browser's scroll bars take no room")
    assert horizontal_overflow(chromium) > 0
