"""Clients that keep sending through faults, and the check of what they end up holding.

A sender retries the same ``client_msg_id`` until it gets a ``send_ack`` (reconnecting as needed),
as a real client would; afterwards every member syncs from zero and the history must hold each
acked message exactly once, with seqs 1..N and no gap, and nothing that was never attempted.
Both sides follow a ``reconnect`` frame as the protocol asks (wait ``after_ms``, connect again), and
every connection they make is recorded, so tests can tell how often, and when, clients moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import websockets

from services.common.ring import Ring
from tests.harness.infra import read_infra
from tests.support.client import Api, Device, User

SEND_TIMEOUT_S = 10.0
RETRY_PAUSE_S = 0.2
# The wait before reconnecting after a 4008 that gave no retry_after (the distributed mode's upgrade refusal).
RATE_LIMITED_PAUSE_S = 1.0
DEADLINE_S = 120.0


@dataclass
class Pair:
    sender: User
    receiver: User
    cid: str
    acked: dict[str, int] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    pushed: int = 0
    # Monotonic time of every connection made, by role ("sender", "receiver"): the first, then each reconnect.
    connects: dict[str, list[float]] = field(default_factory=lambda: {"sender": [], "receiver": []})
    # Pushes one socket got out of seq order (each socket must see a conversation's pushes in order), and how many
    # it got again (delivery is at least once on the wire; clients drop a seq they hold, protocol.md 9.5).
    disorder: list[tuple[int, int]] = field(default_factory=list)
    repeated: int = 0

    def reconnects(self, since: float = 0.0) -> list[float]:
        """When either side connected again after its first connection (and after ``since``)."""
        return sorted(t for times in self.connects.values() for t in times[1:] if t >= since)


async def make_pairs(api: Api, count: int, ring: Ring | None = None) -> list[Pair]:
    """``count`` sender/receiver pairs; with a ring, senders and receivers alternate between its
    nodes (pair i's sender on node i, its receiver on the next), so every node carries traffic."""
    pools: dict[str, list[User]] = {}
    pairs = []
    for i in range(count):
        if ring is None:
            sender, receiver = await api.register(f"fs{i}"), await api.register(f"fr{i}")
        else:
            nodes = ring.members
            sender = await _user_on(api, ring, nodes[i % len(nodes)], pools)
            receiver = await _user_on(api, ring, nodes[(i + 1) % len(nodes)], pools)
        pairs.append(Pair(sender, receiver, await api.direct(sender, receiver)))
    return pairs


async def _user_on(api: Api, ring: Ring, node: str, pools: dict[str, list[User]]) -> User:
    while not pools.get(node):
        user = await api.register("f")
        pools.setdefault(ring.node_for(user.user_id), []).append(user)
    return pools[node].pop()


async def routed_nodes(user: User) -> set[str]:
    """The delivery nodes holding the user's sockets right now, by the route table in the stack's Redis."""
    client = aioredis.from_url(read_infra()["services"]["redis"]["url"], decode_responses=True)
    try:
        return {str(node) for node in await client.hvals(f"courier:route:{user.user_id}")}
    finally:
        await client.aclose()


async def keep_receiving(ws_url: str, pair: Pair, stop: asyncio.Event) -> None:
    """A live receiver: acks what it gets, reconnects through faults (what it misses, sync brings)."""
    while not stop.is_set():
        device = await _connect(ws_url, pair.receiver, pair.connects["receiver"])
        if device is None:
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        try:
            acked = 0
            while not stop.is_set() and not device.closed.is_set() and not await _moved(device):
                seqs = [f["seq"] for f in device.frames if f["type"] == "message" and f["seq"] > acked]
                if seqs:
                    acked = max(seqs)
                    with contextlib.suppress(websockets.ConnectionClosed, OSError):
                        await device.send({"type": "ack", "conversation_id": pair.cid, "seq": acked})
                with contextlib.suppress(TimeoutError, AssertionError):
                    await device.wait_until(lambda d=device: stop.is_set() or d.closed.is_set(), timeout=0.2)
            live = [f["seq"] for f in device.frames if f["type"] == "message" and not f.get("redelivered")]
            pair.disorder += [(a, b) for a, b in itertools.pairwise(live) if b < a]
            pair.repeated += sum(1 for a, b in itertools.pairwise(live) if b == a)
            pair.pushed += len({f["seq"] for f in device.frames if f["type"] == "message"})
        finally:
            await device.close()
        await _back_off_if_limited(device, pair)


async def _back_off_if_limited(device: Device, pair: Pair) -> None:
    """After a socket the server closed for a rate limit (4008), wait as the protocol asks before reconnecting:
    its ``retry_after``, or ``RATE_LIMITED_PAUSE_S`` when it gave none. Reconnecting at once would only be refused
    again, and spend the tokens the other clients of the address need."""
    if device.close_code != 4008:
        return
    pair.errors["rate_limited"] += 1
    refusal = next((f for f in device.frames if f["type"] == "error" and f.get("code") == "rate_limited"), {})
    await asyncio.sleep(float(refusal.get("retry_after") or RATE_LIMITED_PAUSE_S))


async def _moved(device: Device) -> bool:
    """True once the server asked this socket to reconnect and its ``after_ms`` has passed."""
    asked = next((f for f in device.frames if f["type"] == "reconnect"), None)
    if asked is None:
        return False
    with contextlib.suppress(TimeoutError, AssertionError):
        await device.wait_until(device.closed.is_set, timeout=asked.get("after_ms", 0) / 1000)
    return True


async def _connect(ws_url: str, user: User, record: list[float] | None = None) -> Device | None:
    try:
        device = await Device.connect(ws_url, user)
    except (OSError, websockets.InvalidHandshake, websockets.InvalidURI, TimeoutError):
        return None
    if record is not None:
        record.append(time.monotonic())
    return device


async def keep_sending(ws_url: str, pair: Pair, stop: asyncio.Event, interval_s: float = 0.0) -> None:
    """Send numbered messages until ``stop``, one every ``interval_s`` at most; each one is retried with its own
    client_msg_id until acked (or until stop, when it stays unacknowledged)."""
    device: Device | None = None
    number = 0
    try:
        while not stop.is_set():
            number += 1
            client_msg_id = f"{pair.sender.username}-{number}"
            pair.attempted.add(client_msg_id)
            while not stop.is_set():
                if device is not None and not device.closed.is_set() and await _moved(device):
                    await device.close()  # asked to reconnect: go where the gateway now sends this user
                if device is None or device.closed.is_set():
                    if device is not None:
                        await device.close()
                        await _back_off_if_limited(device, pair)
                    device = await _connect(ws_url, pair.sender, pair.connects["sender"])
                    if device is None:
                        pair.errors["connect"] += 1
                        await asyncio.sleep(RETRY_PAUSE_S)
                        continue
                try:
                    answer = await asyncio.wait_for(
                        device.send_text(pair.cid, f"message {number}", client_msg_id=client_msg_id),
                        SEND_TIMEOUT_S,
                    )
                except (TimeoutError, AssertionError, websockets.ConnectionClosed, OSError):
                    pair.errors["socket"] += 1
                    await device.close()
                    await _back_off_if_limited(device, pair)
                    device = None
                    continue
                if answer["type"] == "send_ack":
                    pair.acked[client_msg_id] = int(answer["seq"])
                    if interval_s:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), interval_s)
                    break
                pair.errors[str(answer.get("code"))] += 1
                await asyncio.sleep(RETRY_PAUSE_S)
    finally:
        if device is not None:
            await device.close()


async def wait_for_acks(pairs: list[Pair], at_least: int, *, timeout: float = DEADLINE_S) -> None:
    """Until every pair has ``at_least`` acked messages (the stack works end to end)."""

    async def poll() -> None:
        while any(len(p.acked) < at_least for p in pairs):
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        counts = {p.sender.username: (len(p.acked), dict(p.errors)) for p in pairs}
        raise AssertionError(f"senders did not reach {at_least} acks: {counts}") from None


async def synced_history(ws_url: str, user: User, cid: str) -> list[dict[str, Any]]:
    """Everything of ``cid`` as a device of ``user`` gets it by paginated ``sync`` from zero."""
    device = await Device.connect(ws_url, user)
    try:
        cursor, messages = 0, []
        while True:
            result = await device.request(
                {"type": "sync", "cursors": {cid: cursor}, "limit": 100}, answer="sync_result"
            )
            assert result["type"] == "sync_result", result
            pages = [c for c in result["conversations"] if c["conversation_id"] == cid]
            if not pages or not pages[0]["messages"]:
                return messages
            messages += pages[0]["messages"]
            cursor = pages[0]["messages"][-1]["seq"]
            if not pages[0]["has_more"]:
                return messages
    finally:
        await device.close()


async def verify(api: Api, ws_url: str, pairs: list[Pair]) -> dict[str, int]:
    """The guarantees, for both members of every pair; returns totals for the report."""
    totals = Counter[str]()
    for pair in pairs:
        for member in (pair.sender, await _fresh_login(api, pair.receiver)):
            history = await synced_history(ws_url, member, pair.cid)
            seqs = [m["seq"] for m in history]
            assert seqs == list(range(1, len(seqs) + 1)), f"seqs not 1..N without gaps: {seqs}"
            ids = Counter(m["client_msg_id"] for m in history)
            twice = [cid for cid, n in ids.items() if n > 1]
            assert not twice, f"stored more than once: {twice}"
            stored = {m["client_msg_id"]: m["seq"] for m in history}
            missing = {cid: seq for cid, seq in pair.acked.items() if stored.get(cid) != seq}
            assert not missing, f"acked but not held after sync (or with another seq): {missing}"
            assert set(stored) <= pair.attempted, "history holds messages nobody sent"
        totals["acked"] += len(pair.acked)
        totals["unacked"] += len(pair.attempted - set(pair.acked))
        totals["stored_unacked"] += len(set(stored) - set(pair.acked))
    return dict(totals)


async def _fresh_login(api: Api, user: User) -> User:
    """A new device of the user: nothing cached on the client side."""
    return await api.device(user, f"verifier-{user.username}")


@contextlib.asynccontextmanager
async def senders(ws_url: str, pairs: list[Pair], *, interval_s: float = 0.0) -> Any:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(keep_sending(ws_url, p, stop, interval_s)) for p in pairs]
    tasks += [asyncio.create_task(keep_receiving(ws_url, p, stop)) for p in pairs]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), SEND_TIMEOUT_S * 4)
