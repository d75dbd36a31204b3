"""The Sans-I/O protocol core: frame parsing, the ACK window and the retransmit schedule."""

from __future__ import annotations

import pytest

from services.delivery import protocol
from services.delivery.protocol import AckWindow, FrameError


def _message(cid: str, seq: int) -> dict[str, object]:
    return {"type": "message", "conversation_id": cid, "seq": seq}


def test_parse_every_client_frame_type() -> None:
    frames = [
        '{"type":"send","id":"1","conversation_id":"c","client_msg_id":"m","content":{"type":"text","text":"x"}}',
        '{"type":"ack","conversation_id":"c","seq":3}',
        '{"type":"sync","id":2,"cursors":{"c":4},"limit":10}',
        '{"type":"read","conversation_id":"c","seq":3}',
        '{"type":"typing","conversation_id":"c","state":"start"}',
        '{"type":"presence_subscribe","user_ids":["a","b"]}',
        '{"type":"call","call_id":"k","conversation_id":"c","action":"offer","sdp":"v=0"}',
        '{"type":"ping","id":"p"}',
    ]
    parsed = [protocol.parse_frame(f) for f in frames]
    assert [type(p).__name__ for p in parsed] == [
        "SendFrame",
        "AckFrame",
        "SyncFrame",
        "ReadFrame",
        "TypingFrame",
        "PresenceSubscribeFrame",
        "CallFrame",
        "PingFrame",
    ]


@pytest.mark.parametrize(
    ("data", "ref", "fragment"),
    [
        ("not json", None, "not valid JSON"),
        ("[1,2]", None, "JSON object"),
        ('{"type":"dance","id":"7"}', "7", "unknown frame type"),
        ('{"type":"ack","id":"8","conversation_id":"c","seq":-1}', "8", "seq"),
        ('{"type":"typing","id":9,"conversation_id":"c","state":"maybe"}', 9, "state"),
        ('{"type":"call","call_id":"k","conversation_id":"c","action":"explode"}', None, "action"),
    ],
)
def test_malformed_frames_raise_frame_error_with_the_ref(data: str, ref: object, fragment: str) -> None:
    with pytest.raises(FrameError) as caught:
        protocol.parse_frame(data)
    assert caught.value.ref == ref
    assert fragment in caught.value.message


def test_unacked_frame_is_retransmitted_after_the_timeout_marked_redelivered() -> None:
    window = AckWindow(timeout_s=30, max_redeliveries=3)
    assert window.push(_message("c", 1), now=0)
    assert window.due(now=29.9) == []
    [again] = window.due(now=30)
    assert again["redelivered"] is True and again["seq"] == 1


def test_cumulative_ack_clears_everything_up_to_the_seq() -> None:
    window = AckWindow(timeout_s=30, max_redeliveries=3)
    for seq in (1, 2, 3):
        window.push(_message("c", seq), now=0)
    window.push(_message("other", 1), now=0)
    assert window.ack("c", 2) == 2
    assert [(f["conversation_id"], f["seq"]) for f in window.due(now=31)] == [("c", 3), ("other", 1)]


def test_already_acked_frames_are_not_pushed_again() -> None:
    window = AckWindow(timeout_s=30, max_redeliveries=3)
    window.ack("c", 5)
    assert not window.push(_message("c", 4), now=0)
    assert window.push(_message("c", 6), now=0)


def test_gives_up_after_max_redeliveries_so_the_device_syncs() -> None:
    window = AckWindow(timeout_s=10, max_redeliveries=2)
    window.push(_message("c", 1), now=0)
    assert len(window.due(now=10)) == 1
    assert len(window.due(now=20)) == 1
    assert window.due(now=30) == [] and len(window) == 0 and window.given_up == 1


def test_retransmit_schedule_restarts_from_each_resend() -> None:
    window = AckWindow(timeout_s=10, max_redeliveries=5)
    window.push(_message("c", 1), now=0)
    window.due(now=10)
    assert window.due(now=15) == []
    assert len(window.due(now=20)) == 1


def test_tombstone_frames_are_acked_by_their_event_seq() -> None:
    window = AckWindow(timeout_s=10, max_redeliveries=5)
    window.push({"type": "recalled", "conversation_id": "c", "seq": 1, "event_seq": 7}, now=0)
    window.ack("c", 6)
    assert len(window) == 1
    window.ack("c", 7)
    assert len(window) == 0


def test_a_full_window_drops_its_oldest_frame() -> None:
    window = AckWindow(timeout_s=10, max_redeliveries=5, capacity=2)
    for seq in (1, 2, 3):
        window.push(_message("c", seq), now=0)
    assert [f["seq"] for f in window.due(now=10)] == [2, 3] and window.given_up == 1
