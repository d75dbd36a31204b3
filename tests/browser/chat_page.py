"""Steps on the chat page shared by the browser tests, in the words a person would use."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from playwright.sync_api import Locator, Page, expect

PASSWORD = "correct horse battery"
SESSION_KEY = "courier.session"


@dataclass
class Person:
    username: str
    display_name: str


def person(name: str) -> Person:
    """A person with a username unique across tests sharing one server."""
    tag = secrets.token_hex(3)
    return Person(f"{name.lower()}{tag}", f"{name} {tag}")


def register(page: Page, base_url: str, who: Person) -> None:
    """Create the account through the page's form; it logs in and connects the socket."""
    page.goto(f"{base_url}/")
    form = page.get_by_test_id("register-form")
    form.get_by_label("Username", exact=True).fill(who.username)
    form.get_by_label("Display name").fill(who.display_name)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Register and log in").click()
    expect(page.get_by_test_id("me-name")).to_have_text(who.display_name)
    expect_connected(page)


def log_in(page: Page, base_url: str, who: Person) -> None:
    page.goto(f"{base_url}/")
    form = page.get_by_test_id("login-form")
    form.get_by_label("Username", exact=True).fill(who.username)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("me-name")).to_have_text(who.display_name)
    expect_connected(page)


def expect_connected(page: Page) -> None:
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "open")


def conversation_with(page: Page, title: str) -> Locator:
    return page.locator(f'[data-testid="conversation"][data-title="{title}"]')


def start_direct(page: Page, peer: Person) -> None:
    page.get_by_label("Start a chat").fill(peer.username)
    page.locator(f'[data-testid="user-result"][data-username="{peer.username}"]').click()
    expect(page.get_by_test_id("conversation-title")).to_have_text(peer.display_name)


def composer(page: Page) -> Locator:
    return page.get_by_label("Message", exact=True)


def send_text(page: Page, text: str) -> None:
    composer(page).fill(text)
    page.get_by_role("button", name="Send", exact=True).click()


def shown_text(page: Page, text: str) -> Locator:
    """A message of the open conversation showing ``text``."""
    return page.get_by_test_id("messages").get_by_test_id("message-text").filter(has_text=text)


def own_message(page: Page, text: str, *, status: str = "sent") -> Locator:
    return page.locator(f'[data-testid="message"][data-status="{status}"]').filter(has_text=text)


def stored_session(page: Page) -> dict[str, object] | None:
    """What the page keeps in sessionStorage (tokens, user and device ids)."""
    value = page.evaluate(f"JSON.parse(sessionStorage.getItem('{SESSION_KEY}'))")
    assert value is None or isinstance(value, dict)
    return value


def frame_matching(**fields: object) -> Callable[[str | bytes], bool]:
    """A predicate on a WebSocket payload: a JSON frame with these field values."""

    def matches(payload: str | bytes) -> bool:
        frame = json.loads(payload)
        return isinstance(frame, dict) and all(frame.get(key) == value for key, value in fields.items())

    return matches
