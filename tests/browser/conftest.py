"""Headless Chromium (Playwright) against a real ``courier dev`` server, for the web page's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, WebSocket, expect, sync_playwright

from tests.browser.chat_page import PASSWORD, Person, person
from tests.support.server import RunningServer, run_server

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

    page: Page
    uncaught: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    sockets: list[WebSocket] = field(default_factory=list)

    def socket(self) -> WebSocket:
        """The page's newest WebSocket."""
        assert self.sockets, "the page opened no WebSocket"
        return self.sockets[-1]

    def assert_no_errors(self, *, console: bool = True) -> None:
        """No uncaught exception; and, unless ``console`` is False (a test that drops the server
        on purpose makes the browser log failed connections), no console error either."""
        problems = self.uncaught + (self.console_errors if console else [])
        assert not problems, f"the page reported errors: {problems}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser-deps installs Debian's)")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(Path(tmp_path_factory.mktemp("courier-browser")), BROWSER_ENV) as running:
        yield running


@pytest.fixture
def new_tab(browser: Browser) -> Iterator[Callable[[], Tab]]:
    """Opens a page in a fresh browser context (its own sessionStorage: one person, one device)."""
    contexts: list[BrowserContext] = []

    def open_tab() -> Tab:
        context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 720})
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return watch(context.new_page())

    yield open_tab
    for context in contexts:
        context.close()


def watch(page: Page) -> Tab:
    tab = Tab(page)
    page.on("pageerror", lambda exc: tab.uncaught.append(str(exc)))
    page.on("websocket", lambda socket: tab.sockets.append(socket))
    page.on("console", lambda msg: tab.console_errors.append(msg.text) if msg.type == "error" else None)
    return tab


@dataclass
class ApiUser:
    """Someone using the HTTP API directly, beside the people in browsers."""

    who: Person
    user_id: str
    http: httpx.Client

    def post(self, path: str, body: object = None) -> httpx.Response:
        answer = self.http.post(path, json=body)
        assert answer.is_success, f"POST {path}: {answer.status_code} {answer.text}"
        return answer


@pytest.fixture
def api_user(server: RunningServer) -> Iterator[Callable[[str], ApiUser]]:
    """Registers and logs in a person over HTTP: ``api_user("Bob")``."""
    clients: list[httpx.Client] = []

    def make(name: str) -> ApiUser:
        who = person(name)
        http = httpx.Client(base_url=server.base_url, timeout=30)
        clients.append(http)
        body = {"username": who.username, "password": PASSWORD, "display_name": who.display_name}
        assert http.post("/v1/auth/register", json=body).status_code == 201
        tokens = http.post("/v1/auth/login", json={"username": who.username, "password": PASSWORD}).json()
        http.headers["Authorization"] = f"Bearer {tokens['access_token']}"
        return ApiUser(who, tokens["user_id"], http)

    yield make
    for http in clients:
        http.close()
