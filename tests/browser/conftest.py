"""Headless Chromium (Playwright) against a real ``courier dev`` server, for the web page's tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.server import RunningServer, run_server

playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
# Uploads of a few KB then travel in several parts, so the multipart path is exercised.
BROWSER_ENV = {"COURIER_FILE__PART_SIZE": "1024"}


@dataclass
class Tab:
    """One page and what went wrong in it (uncaught exceptions, console errors)."""

    page: playwright_sync.Page
    uncaught: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def assert_no_errors(self, *, console: bool = True) -> None:
        """No uncaught exception; and, unless ``console`` is False (a test that drops the server
        on purpose makes the browser log failed connections), no console error either."""
        problems = self.uncaught + (self.console_errors if console else [])
        assert not problems, f"the page reported errors: {problems}"


@pytest.fixture(scope="session")
def browser() -> Iterator[playwright_sync.Browser]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM}")
    playwright_sync.expect.set_options(timeout=WAIT_MS)
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(Path(tmp_path_factory.mktemp("courier-browser")), BROWSER_ENV) as running:
        yield running


@pytest.fixture
def new_tab(browser: playwright_sync.Browser) -> Iterator[Callable[[], Tab]]:
    """Opens a page in a fresh browser context (its own sessionStorage: one person, one device)."""
    contexts: list[playwright_sync.BrowserContext] = []

    def open_tab() -> Tab:
        context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 720})
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return watch(context.new_page())

    yield open_tab
    for context in contexts:
        context.close()


def watch(page: playwright_sync.Page) -> Tab:
    tab = Tab(page)
    page.on("pageerror", lambda exc: tab.uncaught.append(str(exc)))
    page.on("console", lambda msg: tab.console_errors.append(msg.text) if msg.type == "error" else None)
    return tab
