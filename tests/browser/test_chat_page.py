"""The web chat page in headless Chromium against a real server: two people chatting end to end."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.chat_page import (
    composer,
    conversation_with,
    own_message,
    person,
    register,
    send_text,
    shown_text,
    start_direct,
)
from tests.browser.conftest import Tab
from tests.support.server import RunningServer

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/courier-chat.png")


def test_two_people_chat_live_with_typing_receipts_and_a_file(
    server: RunningServer, new_tab: Callable[[], Tab], tmp_path: Path
) -> None:
    alice_tab, bob_tab = new_tab(), new_tab()
    alice_page, bob_page = alice_tab.page, bob_tab.page
    alice, bob = person("Alice"), person("Bob")
    register(alice_page, server.base_url, alice)
    register(bob_page, server.base_url, bob)

    # Alice finds Bob by username; Bob's list shows the new conversation without a reload.
    start_direct(alice_page, bob)
    bob_side = conversation_with(bob_page, alice.display_name)
    expect(bob_side).to_be_visible()
    alice_side = conversation_with(alice_page, bob.display_name)
    expect(alice_side.get_by_test_id("presence")).to_have_attribute("data-online", "true")

    # Typing: Bob sees it on the conversation while Alice types.
    composer(alice_page).press_sequentially("Hello Bob, how are you?")
    expect(bob_side.get_by_test_id("conversation-typing")).to_have_text(f"{alice.display_name} is typing…")

    # Sending: pending until the server's send_ack, then live on Bob's side with an unread badge.
    composer(alice_page).press("Enter")
    sent = own_message(alice_page, "Hello Bob")
    expect(sent).to_have_attribute("data-seq", "1")
    expect(bob_side.get_by_test_id("conversation-preview")).to_have_text("Hello Bob, how are you?")
    expect(bob_side.get_by_test_id("unread-badge")).to_have_text("1")
    expect(bob_side.get_by_test_id("conversation-typing")).to_have_count(0)
    expect(alice_page.get_by_test_id("seen")).to_have_count(0)

    # Bob opens it: the message is there, his badge clears, and Alice sees "Seen" under her message.
    bob_side.click()
    expect(shown_text(bob_page, "Hello Bob, how are you?")).to_be_visible()
    expect(bob_side.get_by_test_id("unread-badge")).to_have_count(0)
    expect(sent.get_by_test_id("seen")).to_have_text("Seen")

    # Bob replies; Alice has the conversation open and sees it arrive.
    send_text(bob_page, "Fine, thanks! Sending the notes?")
    expect(shown_text(alice_page, "Fine, thanks! Sending the notes?")).to_be_visible()
    expect(alice_page.get_by_test_id("messages").get_by_test_id("message")).to_have_count(2)

    # A file in several parts: uploaded, sent as a file message, downloaded by Bob byte for byte.
    payload = secrets.token_bytes(2500)
    alice_page.locator("#file-input").set_input_files(
        files=[{"name": "notes.bin", "mimeType": "application/octet-stream", "buffer": payload}]
    )
    expect(own_message(alice_page, "notes.bin")).to_be_visible()
    link = bob_page.get_by_test_id("file-link").filter(has_text="notes.bin")
    expect(link).to_be_enabled()
    with bob_page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == "notes.bin"
    saved = tmp_path / "downloaded.bin"
    download.save_as(saved)
    assert saved.read_bytes() == payload

    # Each side shows the conversation exactly once, whatever was pushed twice or synced.
    expect(alice_page.get_by_test_id("messages").get_by_test_id("message")).to_have_count(3)
    expect(bob_page.get_by_test_id("messages").get_by_test_id("message")).to_have_count(3)
    alice_page.screenshot(path=str(SCREENSHOT))
    alice_tab.assert_no_errors()
    bob_tab.assert_no_errors()
