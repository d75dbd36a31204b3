"""The web chat page in headless Chromium against a real server: two people chatting end to end."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import FilePayload, expect

from tests.browser.chat_page import (
    composer,
    conversation_with,
    frame_matching,
    own_message,
    person,
    register,
    send_text,
    shown_text,
    start_direct,
)
from tests.browser.conftest import ApiUser, Tab
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

    # Sending: pending until the server's send_ack, then live on Bob's side with an unread badge;
    # Bob's page acks the pushed message so the server stops tracking it for retransmission.
    cid = alice_side.get_attribute("data-conversation-id")
    with bob_tab.socket().expect_event("framesent", frame_matching(type="ack", conversation_id=cid, seq=1)):
        composer(alice_page).press("Enter")
        sent = own_message(alice_page, "Hello Bob")
        expect(sent).to_have_attribute("data-seq", "1")
        expect(bob_side.get_by_test_id("conversation-preview")).to_have_text("Hello Bob, how are you?")
    expect(bob_side.get_by_test_id("unread-badge")).to_have_attribute("data-count", "1")
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
    upload: FilePayload = {"name": "notes.bin", "mimeType": "application/octet-stream", "buffer": payload}
    alice_page.get_by_label("Attach a file").set_input_files(files=[upload])
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


def test_a_group_made_from_usernames_shows_senders_and_who_has_read(
    server: RunningServer, new_tab: Callable[[], Tab], api_user: Callable[[str], ApiUser]
) -> None:
    tab = new_tab()
    page = tab.page
    alice = person("Alice")
    register(page, server.base_url, alice)
    bob, carol = api_user("Bob"), api_user("Carol")

    page.get_by_text("New group").click()
    page.get_by_label("Group title").fill("Weekend plans")
    page.get_by_label("Usernames").fill(f"{bob.who.username}, {carol.who.username}")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Weekend plans")
    expect(page.get_by_test_id("conversation-presence")).to_have_text("3 members")
    cid = page.get_by_test_id("conversation").filter(has_text="Weekend plans").get_attribute("data-conversation-id")

    bob.post(f"/v1/conversations/{cid}/messages", {"client_msg_id": "b1", "content": {"type": "text", "text": "Hike?"}})
    arrived = page.get_by_test_id("message").filter(has_text="Hike?")
    expect(arrived).to_contain_text(bob.who.display_name)  # the sender's name, in a group

    send_text(page, "Yes, Saturday")
    mine = own_message(page, "Yes, Saturday")
    expect(mine).to_have_attribute("data-seq", "2")
    bob.post(f"/v1/conversations/{cid}/read", {"seq": 2})
    expect(mine.get_by_test_id("seen")).to_have_text(f"Seen by {bob.who.display_name}")
    carol.post(f"/v1/conversations/{cid}/read", {"seq": 2})
    expect(mine.get_by_test_id("seen")).to_contain_text(carol.who.display_name)
    tab.assert_no_errors()


def test_recalled_and_edited_messages_change_in_place_live_and_after_a_reload(
    server: RunningServer, new_tab: Callable[[], Tab], api_user: Callable[[str], ApiUser]
) -> None:
    tab = new_tab()
    page = tab.page
    bob = person("Bob")
    register(page, server.base_url, bob)
    bob_id = page.evaluate("JSON.parse(sessionStorage.getItem('courier.session')).user_id")
    alice = api_user("Alice")
    cid = alice.post("/v1/conversations", {"type": "direct", "peer_id": bob_id}).json()["conversation_id"]
    for client_msg_id, text in (("a1", "First draft"), ("a2", "Oops, wrong chat")):
        alice.post(
            f"/v1/conversations/{cid}/messages",
            {"client_msg_id": client_msg_id, "content": {"type": "text", "text": text}},
        )

    conversation_with(page, alice.who.display_name).click()
    expect(shown_text(page, "Oops, wrong chat")).to_be_visible()

    alice.post(f"/v1/conversations/{cid}/messages/1/edit", {"content": {"type": "text", "text": "Final version"}})
    alice.post(f"/v1/conversations/{cid}/messages/2/recall")

    def check_final_state() -> None:
        first, second = (
            page.locator('[data-testid="message"][data-seq="1"]'),
            page.locator('[data-testid="message"][data-seq="2"]'),
        )
        expect(first.get_by_test_id("message-text")).to_have_text("Final version")
        expect(first.get_by_test_id("message-edited")).to_be_visible()
        expect(second.get_by_test_id("message-recalled")).to_be_visible()
        expect(page.get_by_test_id("messages").get_by_test_id("message")).to_have_count(2)
        expect(page.get_by_text("Oops, wrong chat")).to_have_count(0)

    check_final_state()
    page.reload()
    conversation_with(page, alice.who.display_name).click()
    check_final_state()
    expect(conversation_with(page, alice.who.display_name).get_by_test_id("conversation-preview")).to_have_text(
        "Message recalled"
    )
    tab.assert_no_errors()
