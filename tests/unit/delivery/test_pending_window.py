"""What the ACK window tells a pending store: which frames it tracks and which it gave up on."""

from __future__ import annotations

from services.delivery.protocol import AckWindow
from tests.unit.delivery.test_pending_contract import message


def test_the_window_names_the_frames_it_gave_up_on_once() -> None:
    window = AckWindow(timeout_s=10, max_redeliveries=1, capacity=3)
    window.push(message("c", 1), now=0)
    for seq in (2, 3, 4):
        window.push(message("c", seq), now=5)  # full at c/4: c/1 goes
    window.due(now=15)
    window.ack("c", 3)
    window.due(now=25)  # c/4 was resent once already

    assert window.take_given_up() == [("c", 1), ("c", 4)]
    assert window.take_given_up() == []
    assert window.given_up == 2


def test_the_window_says_whether_a_frame_is_tracked() -> None:
    window = AckWindow(timeout_s=10, max_redeliveries=1)
    window.push(message("c", 1), now=0)
    window.push({"type": "recalled", "conversation_id": "c", "seq": 1, "event_seq": 4}, now=0)

    assert ("c", 1) in window and ("c", 4) in window and ("c", 2) not in window
    window.ack("c", 1)
    assert ("c", 1) not in window
