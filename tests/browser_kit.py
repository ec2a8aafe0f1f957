"""A real browser for the example apps' tests: headless Chromium through Selenium.

Fixtures (a pytest plugin, enabled in tests/conftest.py):

- ``chromium``: a session-wide headless Chromium (Debian's ``chromium`` and
  ``chromium-driver`` packages, found on PATH or at ``/usr/bin``), driven by
  Selenium; each test gets it with its cookies cleared and the window at
  1280x900 (``resize(driver, PHONE)`` for a phone's 390x844).
- ``axe``: runs axe-core in the current page and returns its violations
  of impact serious or critical (the npm package ``axe-core``; its
  ``axe.min.js`` is found at ``ACCOUNT_MERGE_AXE_JS``, or under
  ``~/.cache/account-merge-axe/node_modules``, where ``.ci/run`` installs it).
- ``serve_wsgi(app)``: serves a WSGI app (Flask) on 127.0.0.1 in a thread
  and gives its base URL.
- ``screenshot(driver, name)``: saves a PNG of the page; into the folder
  ``ACCOUNT_MERGE_SCREENSHOTS`` names (the docs' pictures come from there),
  else into the test's temporary folder.

Without a browser or axe-core, the tests that need them are skipped with
the reason, unless ``ACCOUNT_MERGE_REQUIRE_BROWSER=1`` (set by ``.ci/run``),
which turns a missing one into a failure.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Window sizes: a laptop, and a phone (CSS pixels).
DESKTOP = (1280, 900)
PHONE = (390, 844)

#: Flags for a headless Chromium on a machine with no network beyond loopback.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--lang=fr-FR", "--force-device-scale-factor=1",
)

_REQUIRED = os.environ.get("ACCOUNT_MERGE_REQUIRE_BROWSER") == "1"


def _missing(reason: str) -> None:
    if _REQUIRED:
        pytest.fail(f"{reason} (ACCOUNT_MERGE_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _find(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)


def axe_script_path() -> Path | None:
    """Where axe-core's ``axe.min.js`` is, or None."""
    given = os.environ.get("ACCOUNT_MERGE_AXE_JS")
    candidates = [Path(given)] if given else []
    candidates.append(Path.home() / ".cache" / "account-merge-axe" / "node_modules"
                      / "axe-core" / "axe.min.js")
    return next((c for c in candidates if c.is_file()), None)


@pytest.fixture(scope="session")
def _chromium_session() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    binary, driver_path = _find("chromium"), _find("chromedriver")
    if binary is None or driver_path is None:
        _missing("no Chromium: apt-get install chromium chromium-driver")
    assert binary is not None and driver_path is not None
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def chromium(_chromium_session: Any) -> Any:
    """The browser, with no cookies left from another test, at the desktop size."""
    driver = _chromium_session
    driver.delete_all_cookies()
    resize(driver, DESKTOP)
    return driver


def resize(driver: Any, size: tuple[int, int]) -> None:
    """Make the page's viewport *size* CSS pixels (the window's chrome taken into account)."""
    driver.set_window_size(*size)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])


def horizontal_overflow(driver: Any) -> int:
    """How many CSS pixels the page is wider than its viewport (0: no horizontal scroll).

    The viewport's width is the layout's (``clientWidth``), without the vertical
    scroll bar: measured against ``innerWidth``, which counts it, a page that
    scrolls vertically would hide an overflow narrower than the bar.
    """
    return int(driver.execute_script(
        "return Math.max(document.documentElement.scrollWidth,"
        " document.body ? document.body.scrollWidth : 0)"
        " - document.documentElement.clientWidth"))


@pytest.fixture(scope="session")
def _axe_source() -> str:
    path = axe_script_path()
    if path is None:
        _missing("axe-core is not installed: npm install --prefix "
                 "~/.cache/account-merge-axe axe-core@4 (or set ACCOUNT_MERGE_AXE_JS)")
    assert path is not None
    return path.read_text(encoding="utf-8")


@pytest.fixture
def axe(_axe_source: str) -> Callable[[Any], list[dict[str, Any]]]:
    """``axe(driver)``: the violations of impact serious or critical in the current page."""

    def run(driver: Any) -> list[dict[str, Any]]:
        driver.execute_script(_axe_source)
        result = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']})"
            ".then(r => done(r.violations)).catch(e => done({error: String(e)}));")
        if isinstance(result, dict) and "error" in result:
            raise RuntimeError(f"axe-core failed: {result['error']}")
        return [v for v in result if v.get("impact") in ("serious", "critical")]

    return run


def describe_violations(violations: list[dict[str, Any]]) -> str:
    """One line per violation and node, for an assertion's message."""
    lines = []
    for v in violations:
        for node in v.get("nodes", []):
            lines.append(f"{v['id']} ({v['impact']}): {v['help']} at {node.get('target')}")
    return "\n".join(lines)


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[[Any], str]]:
    """``serve_wsgi(app)``: the base URL of *app* served on 127.0.0.1 in a thread."""
    from werkzeug.serving import make_server

    servers: list[Any] = []

    def serve(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Any, str], Path]:
    """``screenshot(driver, name)``: a PNG of the page (see the module docstring)."""
    folder = Path(os.environ.get("ACCOUNT_MERGE_SCREENSHOTS") or tmp_path / "screens")
    folder.mkdir(parents=True, exist_ok=True)

    def take(driver: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)  # a name may hold a folder: "django/x"
        driver.save_screenshot(str(path))
        return path

    return take
