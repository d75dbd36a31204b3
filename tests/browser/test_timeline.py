"""The page's per-conversation rules (static/timeline.js), run in Chromium without the rest of the page."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.browser.conftest import Tab
from tests.support.server import RunningServer

pytestmark = pytest.mark.browser

# Shared by every case: the module, and a message factory.
PRELUDE = """
const t = await import("/timeline.js");
const message = (seq, sender = "bob", extra = {}) => ({
  seq, conversation_id: "c1", sender_id: sender, client_msg_id: `m${seq}`,
  content: { type: "text", text: `text ${seq}` }, created_at: "2030-01-01T00:00:00Z",
  recalled: false, edited: false, ...extra,
});
const loaded = () => Object.assign(t.newConversation("c1"), { loaded: true });
const recall = (target, eventSeq) =>
  t.tombstoneOf({ type: "recalled", conversation_id: "c1", seq: target, event_seq: eventSeq, by: "bob" });
"""

Run = Callable[[str], Any]


@pytest.fixture
def run(server: RunningServer, new_tab: Callable[[], Tab]) -> Iterator[Run]:
    tab = new_tab()
    tab.page.goto(f"{server.base_url}/")

    def evaluate(body: str) -> Any:
        return tab.page.evaluate(f"async () => {{ {PRELUDE}\n{body} }}")

    yield evaluate
    tab.assert_no_errors()


def test_duplicates_are_ignored_and_a_gap_is_reported_until_it_fills(run: Run) -> None:
    result = run("""
        const c = loaded();
        const answers = [message(1), message(1), message(3)].map((m) => t.applyEvent(c, m, "me"));
        const cursorAtGap = c.cursor;
        answers.push(t.applyEvent(c, message(2), "me"));
        return { answers, cursorAtGap, cursor: c.cursor, seqs: t.orderedMessages(c).map((m) => m.seq) };
    """)
    assert result["answers"] == [
        {"fresh": True, "gap": False},
        {"fresh": False, "gap": False},
        {"fresh": True, "gap": True},
        {"fresh": True, "gap": False},
    ]
    assert result["cursorAtGap"] == 1
    assert result["cursor"] == 3
    assert result["seqs"] == [1, 2, 3]


def test_the_latest_edit_wins_whatever_order_edits_arrive_in_and_a_recall_wipes_the_content(run: Run) -> None:
    result = run("""
        const c = loaded();
        t.applyEvent(c, message(1), "me");
        const edit = (seq, text) => t.tombstoneOf({ type: "edited", conversation_id: "c1", seq: 1, event_seq: seq,
                                                   by: "bob", content: { type: "text", text } });
        t.applyEvent(c, edit(3, "second edit"), "me");
        t.applyEvent(c, edit(2, "first edit"), "me");
        const afterEdits = { ...c.messages.get(1) };
        t.applyEvent(c, recall(1, 4), "me");
        return { afterEdits, afterRecall: c.messages.get(1), shown: c.messages.size, cursor: c.cursor };
    """)
    assert result["afterEdits"]["content"] == {"type": "text", "text": "second edit"}
    assert result["afterEdits"]["edited"] is True
    assert result["afterRecall"]["content"] == {"type": "recalled"}
    assert result["afterRecall"]["recalled"] is True
    assert result["shown"] == 1, "tombstones change messages; they are not shown themselves"
    assert result["cursor"] == 4


def test_a_recall_seen_while_history_loads_wins_over_the_older_copy_in_the_page(run: Run) -> None:
    result = run("""
        const c = Object.assign(t.newConversation("c1"), { loading: true });
        t.jumpCursor(c, 5);
        t.applyEvent(c, recall(5, 6), "me");
        t.mergeHistory(c, [message(4), message(5)], "me");
        return { fifth: c.messages.get(5), fourth: c.messages.get(4) };
    """)
    assert result["fifth"]["recalled"] is True
    assert result["fifth"]["content"] == {"type": "recalled"}
    assert result["fourth"]["content"]["text"] == "text 4"


def test_seen_marks_our_newest_message_that_the_peer_has_read(run: Run) -> None:
    result = run("""
        const c = loaded();
        for (const m of [message(1, "me"), message(2), message(3, "me"), message(4, "me")]) t.applyEvent(c, m, "me");
        const before = t.seen(c, "me");
        c.peerRead.set("bob", 3);
        const upToThree = t.seen(c, "me");
        c.peerRead.set("bob", 4);
        return { before, upToThree, all: t.seen(c, "me") };
    """)
    assert result["before"] is None
    assert result["upToThree"] == {"seq": 3, "readers": ["bob"]}
    assert result["all"] == {"seq": 4, "readers": ["bob"]}


def test_the_list_summary_moves_the_cursor_and_unread_counts_follow_events(run: Run) -> None:
    result = run("""
        const c = t.newConversation("c1");
        t.adoptSummary(c, { conversation_id: "c1", type: "direct", members: [], max_seq: 5, read_seq: 3,
                            unread_count: 2, last_message: null, created_at: "2030-01-01T00:00:00Z" });
        const old = t.applyEvent(c, message(4), "me");
        t.applyEvent(c, message(6), "me");
        const unreadAfterPeer = c.data.unread_count;
        c.pending.set("mine", { clientMsgId: "mine" });
        t.applyEvent(c, message(7, "me", { client_msg_id: "mine" }), "me");
        return { old, unreadAfterPeer, unreadAfterOwn: c.data.unread_count, pending: c.pending.size,
                 preview: t.preview(c.data.last_message, "me"), cursor: c.cursor };
    """)
    assert result["old"] == {"fresh": False, "gap": False}
    assert result["unreadAfterPeer"] == 3
    assert result["unreadAfterOwn"] == 0, "sending reads everything before it"
    assert result["pending"] == 0, "the stored event settles the pending message with its client_msg_id"
    assert result["preview"] == "You: text 7"
    assert result["cursor"] == 7
