"""The hub: multi-device push, replacement of a device's old socket, slow clients."""

from __future__ import annotations

from services.delivery.hub import CLOSE_REPLACED, CLOSE_TOO_SLOW, Close, Connection, Hub
from services.delivery.protocol import AckWindow


def _conn(user: str, device: str, *, queue_size: int = 16) -> Connection:
    return Connection(user, device, queue_size=queue_size, window=AckWindow(timeout_s=5, max_redeliveries=2))


async def _drain(conn: Connection) -> list[str | Close]:
    items = []
    while conn.queued:
        items.append(await conn.next_outgoing())
    return items


async def test_push_reaches_every_device_of_every_user_except_the_skipped_one() -> None:
    hub = Hub(clock=lambda: 0.0)
    phone, laptop, bob = _conn("alice", "phone"), _conn("alice", "laptop"), _conn("bob", "d")
    for c in (phone, laptop, bob):
        hub.attach(c)
    frame = {"type": "message", "conversation_id": "c", "seq": 1}
    await hub.push(["alice", "bob"], frame, tracked=True, skip_device=("alice", "phone"))
    assert (phone.queued, laptop.queued, bob.queued) == (0, 1, 1)


async def test_same_device_connecting_again_closes_the_old_socket_with_4009() -> None:
    hub = Hub()
    old, new = _conn("alice", "phone"), _conn("alice", "phone")
    hub.attach(old)
    hub.attach(new)
    assert old.closing == Close(CLOSE_REPLACED, old.closing.reason if old.closing else "")
    assert not hub.detach(old)  # the replaced socket ending does not remove the new one
    assert hub.devices("alice") == [new]


async def test_slow_client_is_disconnected_without_blocking_others() -> None:
    hub = Hub(clock=lambda: 0.0)
    slow, fast = _conn("slow", "d", queue_size=3), _conn("fast", "d", queue_size=100)
    hub.attach(slow)
    hub.attach(fast)
    for seq in range(1, 11):
        await hub.push(["slow", "fast"], {"type": "typing", "conversation_id": "c", "seq": seq})
    assert fast.queued == 10
    items = await _drain(slow)
    assert items == [Close(CLOSE_TOO_SLOW, items[0].reason if isinstance(items[0], Close) else "")]


async def test_retransmit_resends_unacked_frames_after_the_timeout() -> None:
    now = 0.0
    hub = Hub(clock=lambda: now)
    conn = _conn("bob", "d")
    hub.attach(conn)
    await hub.push(["bob"], {"type": "message", "conversation_id": "c", "seq": 1}, tracked=True)
    await _drain(conn)
    assert hub.retransmit_due() == 0
    now = 5.0
    assert hub.retransmit_due() == 1
    [frame] = await _drain(conn)
    assert isinstance(frame, str) and '"redelivered":true' in frame
