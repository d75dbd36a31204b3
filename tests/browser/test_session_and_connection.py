"""The chat page keeps its session and its socket: token refresh, logout, tab takeover, server restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.chat_page import (
    PASSWORD,
    SESSION_KEY,
    conversation_with,
    expect_connected,
    log_in,
    own_message,
    person,
    register,
    send_text,
    shown_text,
    start_direct,
    stored_session,
)
from tests.browser.conftest import BROWSER_ENV, Tab
from tests.support.server import RunningServer, free_port, run_server

pytestmark = pytest.mark.browser

SPOIL_ACCESS_TOKEN = """key => {
    const stored = JSON.parse(sessionStorage.getItem(key));
    stored.access_token = "not-a-valid-token";
    sessionStorage.setItem(key, JSON.stringify(stored));
}"""
TOKEN_CHANGED = "([key, token]) => JSON.parse(sessionStorage.getItem(key) ?? 'null')?.access_token !== token"


def test_a_rejected_access_token_is_refreshed_and_logout_ends_the_session(
    server: RunningServer, new_tab: Callable[[], Tab]
) -> None:
    tab = new_tab()
    page = tab.page
    alice = person("Alice")
    register(page, server.base_url, alice)
    before = stored_session(page)
    assert before is not None

    # A token the server refuses (as an expired one): the page refreshes it once and carries on.
    page.evaluate(SPOIL_ACCESS_TOKEN, SESSION_KEY)
    page.reload()
    expect(page.get_by_test_id("me-name")).to_have_text(alice.display_name)
    expect_connected(page)
    after = stored_session(page)
    assert after is not None
    assert after["refresh_token"] != before["refresh_token"], "the refresh token rotates"
    assert after["device_id"] == before["device_id"]

    # Logging out forgets the tokens here and revokes the refresh token on the server.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("connection-status")).to_be_hidden()
    assert stored_session(page) is None
    refused = httpx.post(f"{server.base_url}/v1/auth/refresh", json={"refresh_token": after["refresh_token"]})
    assert refused.status_code == 401, refused.text

    log_in(page, server.base_url, alice)
    tab.assert_no_errors(console=False)  # the browser logs the deliberate 401 as a failed resource


def test_a_second_tab_of_the_same_device_takes_over_and_the_first_can_take_it_back(
    server: RunningServer, new_tab: Callable[[], Tab]
) -> None:
    tab = new_tab()
    first = tab.page
    register(first, server.base_url, person("Alice"))

    # A tab opened from this one starts with a copy of its sessionStorage: the same device.
    with first.context.expect_page() as opened:
        first.evaluate("window.open(location.href, '_blank')")
    second = opened.value
    expect_connected(second)
    first_session, second_session = stored_session(first), stored_session(second)
    assert first_session is not None and second_session is not None
    assert first_session["device_id"] == second_session["device_id"]

    status = first.get_by_test_id("connection-status")
    expect(status).to_have_attribute("data-state", "replaced")
    expect(status).to_contain_text("open in another tab")

    first.get_by_role("button", name="Use here").click()
    expect_connected(first)
    expect(second.get_by_test_id("connection-status")).to_have_attribute("data-state", "replaced")
    tab.assert_no_errors()


def test_after_a_server_restart_the_page_reconnects_sends_what_waited_and_syncs_what_it_missed(
    tmp_path: Path, new_tab: Callable[[], Tab]
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    alice_tab, bob_tab = new_tab(), new_tab()
    alice_page, bob_page = alice_tab.page, bob_tab.page
    alice, bob = person("Alice"), person("Bob")
    with run_server(data_dir, BROWSER_ENV, port=port) as server:
        register(alice_page, server.base_url, alice)
        register(bob_page, server.base_url, bob)
        start_direct(alice_page, bob)
        send_text(alice_page, "Before the restart")
        conversation_with(bob_page, alice.display_name).click()
        expect(shown_text(bob_page, "Before the restart")).to_be_visible()

    for page in (alice_page, bob_page):
        expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "waiting")
    # Bob stays away until Alice's message is stored, so he can only get it from sync.
    bob_page.context.set_offline(True)
    send_text(alice_page, "Sent while the server was down")
    expect(own_message(alice_page, "Sent while the server was down", status="queued")).to_be_visible()

    with run_server(data_dir, BROWSER_ENV, port=port):
        expect(own_message(alice_page, "Sent while the server was down")).to_have_attribute("data-seq", "2")
        expect(bob_page.get_by_test_id("connection-status")).not_to_have_attribute("data-state", "open")
        bob_page.context.set_offline(False)
        expect_connected(bob_page)
        expect(shown_text(bob_page, "Sent while the server was down")).to_be_visible()
        expect(bob_page.get_by_test_id("messages").get_by_test_id("message")).to_have_count(2)
        expect(alice_page.get_by_test_id("messages").get_by_test_id("message")).to_have_count(2)
    alice_tab.assert_no_errors(console=False)  # failed reconnects are logged by the browser itself
    bob_tab.assert_no_errors(console=False)


def test_the_access_token_is_refreshed_before_it_expires_in_every_tab_of_the_device(
    tmp_path: Path, new_tab: Callable[[], Tab]
) -> None:
    env = {**BROWSER_ENV, "COURIER_JWT__ACCESS_TTL_S": "30"}
    with run_server(tmp_path / "data", env) as server:
        tab = new_tab()
        page = tab.page
        register(page, server.base_url, person("Alice"))
        with page.context.expect_page() as opened:
            page.evaluate("window.open(location.href, '_blank')")
        other = opened.value
        expect(other.get_by_test_id("connection-status")).to_have_attribute("data-state", "open")
        before = stored_session(page)
        assert before is not None

        # Refreshed at 80 % of the 30 s lifetime; both tabs end on the same new pair, and the
        # server did not see the old refresh token twice (that would have ended the session).
        page.wait_for_function(TOKEN_CHANGED, arg=[SESSION_KEY, before["access_token"]], timeout=60_000)
        other.wait_for_function(TOKEN_CHANGED, arg=[SESSION_KEY, before["access_token"]], timeout=60_000)
        after, other_after = stored_session(page), stored_session(other)
        assert after is not None and other_after is not None
        assert after["refresh_token"] == other_after["refresh_token"]

        # The new token works for calls that need it, and survives a reload.
        bob = person("Bob")
        registered = httpx.post(
            f"{server.base_url}/v1/auth/register",
            json={"username": bob.username, "password": PASSWORD, "display_name": bob.display_name},
        )
        assert registered.status_code == 201, registered.text
        expect_connected(other)
        start_direct(other, bob)
        other.reload()
        expect(other.get_by_test_id("me-name")).to_be_visible()
        expect(conversation_with(other, bob.display_name)).to_be_visible()
        tab.assert_no_errors()
