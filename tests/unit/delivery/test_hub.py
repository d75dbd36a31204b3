"""The hub: multi-device push, replacement of a device's old socket, slow clients."""

from __future__ import annotations

import json
from typing import Any

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


async def test_drain_asks_every_socket_to_reconnect_at_its_own_time_then_closes_the_stragglers() -> None:
    import asyncio
    import random

    from services.delivery.hub import CLOSE_RESTART

    hub = Hub()
    conns = [_conn(f"user{i}", "d") for i in range(40)]
    for conn in conns:
        hub.attach(conn)
    leaving = conns[:20]  # these clients follow the reconnect frame and leave by themselves
    for conn in leaving:
        hub.detach(conn)
    loop = asyncio.get_running_loop()
    closed_at: dict[str, float] = {}
    for conn in conns:
        original = conn.close

        def recording(code: int, reason: str, *, c: Connection = conn, close: Any = original, **kw: Any) -> None:
            closed_at[c.user_id] = loop.time()
            close(code, reason, **kw)

        conn.close = recording  # type: ignore[method-assign]
    received: dict[str, list[str | Close]] = {c.user_id: [] for c in conns}

    async def writer(conn: Connection) -> None:  # what the socket's writer task does: send each frame as it comes
        while not isinstance(item := await conn.next_outgoing(), Close):
            received[conn.user_id].append(item)
        received[conn.user_id].append(item)

    writers = [asyncio.create_task(writer(c)) for c in conns[20:]]
    started = loop.time()
    asked = await hub.drain(0.5, grace_s=0.2, rng=random.Random(7))
    await asyncio.wait_for(asyncio.gather(*writers), 10)
    assert hub.draining
    # The leavers were detached before the drain: only the sockets still attached are asked.
    assert asked == 20
    staying = conns[20:]
    delays = {}
    for conn in staying:
        frame, close = received[conn.user_id]
        assert isinstance(frame, str) and isinstance(close, Close), received[conn.user_id]
        after_ms = json.loads(frame)["after_ms"]
        assert frame.startswith('{"type":"reconnect"') and 0 <= after_ms <= 500
        delays[conn.user_id] = after_ms
        assert close.code == CLOSE_RESTART
        # Never closed before its client had its delay and the grace to leave by itself.
        assert closed_at[conn.user_id] - started >= after_ms / 1000 + 0.2 - 0.01
    assert len(set(delays.values())) > 10, "the reconnects are spread over the window, not all at one time"
    order = sorted(staying, key=lambda c: closed_at[c.user_id])
    assert [delays[c.user_id] for c in order] == sorted(delays.values()), "closed in the order of their delays"
    assert not any(c.user_id in closed_at for c in leaving)
