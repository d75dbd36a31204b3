"""The PendingStore contract over the ``new_store`` fixture: the in-memory store here, and
tests/integration/test_redis_pending.py runs these same functions over Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from services.common.ids import new_id
from services.delivery.pending import MemoryPendingStore, Pending, PendingStore

NewStore = Callable[..., PendingStore]


@pytest.fixture
def new_store() -> NewStore:
    """Builds a store; ``capacity=`` bounds each device's set."""
    return MemoryPendingStore


def uid(name: str) -> str:
    return f"{name}-{new_id()}"


def message(conversation_id: str, seq: int, text: str = "hi") -> dict[str, Any]:
    return {
        "type": "message",
        "conversation_id": conversation_id,
        "seq": seq,
        "content": {"type": "text", "text": text},
    }


def keys(pending: Pending) -> list[tuple[str, int]]:
    return [(f["conversation_id"], f.get("event_seq", f["seq"])) for f in pending.frames]


async def test_an_unknown_device_has_nothing_pending(new_store: NewStore) -> None:
    assert await new_store().load(uid("u"), "d") == Pending([], {})


async def test_frames_load_intact_in_conversation_then_seq_order(new_store: NewStore) -> None:
    store, u, c = new_store(), uid("u"), uid("c")
    longer = f"{c}1"  # sorts after c, whatever follows the separator
    await store.add(u, "d", [message(longer, 1)])
    await store.add(u, "d", [message(c, 10, "dix"), message(c, 9, "ñ ✓ \x00 end")])
    await store.add(u, "d", [message(c, 2)])

    pending = await store.load(u, "d")

    assert keys(pending) == [(c, 2), (c, 9), (c, 10), (longer, 1)]
    assert pending.frames[1] == message(c, 9, "ñ ✓ \x00 end")
    assert pending.acked == {}


async def test_ack_is_cumulative_and_drops_only_that_conversations_frames_up_to_the_seq(new_store: NewStore) -> None:
    store, u, c = new_store(), uid("u"), uid("c")
    other = f"{c}-other"
    await store.add(u, "d", [message(c, seq) for seq in (1, 2, 3)] + [message(other, 1)])

    dropped = await store.ack(u, "d", c, 2)

    assert dropped == 2
    assert await store.load(u, "d") == Pending([message(c, 3), message(other, 1)], {c: 2})


async def test_an_older_ack_never_lowers_the_acked_seq(new_store: NewStore) -> None:
    store, u, c = new_store(), uid("u"), uid("c")
    await store.ack(u, "d", c, 5)

    assert await store.ack(u, "d", c, 3) == 0
    assert (await store.load(u, "d")).acked == {c: 5}


async def test_frames_at_or_below_the_acked_seq_are_not_tracked(new_store: NewStore) -> None:
    store, u, c = new_store(), uid("u"), uid("c")
    await store.ack(u, "d", c, 5)

    await store.add(u, "d", [message(c, 4), message(c, 5), message(c, 6)])

    assert await store.load(u, "d") == Pending([message(c, 6)], {c: 5})


async def test_tombstones_are_keyed_and_acked_by_their_event_seq(new_store: NewStore) -> None:
    store, u, c = new_store(), uid("u"), uid("c")
    recalled = {"type": "recalled", "conversation_id": c, "seq": 1, "event_seq": 7, "by": u}
    await store.add(u, "d", [message(c, 1), recalled])

    await store.ack(u, "d", c, 6)
    assert (await store.load(u, "d")).frames == [recalled]
    await store.ack(u, "d", c, 7)
    assert (await store.load(u, "d")).frames == []


async def test_adding_a_tracked_frame_again_keeps_one_copy(new_store: NewStore) -> None:
    store, u, c = new_store(), uid("u"), uid("c")
    await store.add(u, "d", [message(c, 1)])
    await store.add(u, "d", [message(c, 1)])

    assert (await store.load(u, "d")).frames == [message(c, 1)]


async def test_forget_drops_the_named_frames_and_keeps_the_acked_seqs(new_store: NewStore) -> None:
    store, u, c = new_store(), uid("u"), uid("c")
    await store.ack(u, "d", c, 1)
    await store.add(u, "d", [message(c, seq) for seq in (2, 3, 4)])

    await store.forget(u, "d", [(c, 2), (c, 4), (uid("c"), 9)])
    await store.forget(u, "d", [])

    assert await store.load(u, "d") == Pending([message(c, 3)], {c: 1})


async def test_concurrent_adds_and_acks_of_many_devices_each_keep_their_own(new_store: NewStore) -> None:
    store, cid = new_store(), new_id()
    devices = [(uid(f"user{n}"), f"d{n % 2}") for n in range(30)]
    await asyncio.gather(
        *(store.add(user, device, [message(cid, 1), message(cid, 2), message(cid, 3)]) for user, device in devices)
    )

    dropped = await asyncio.gather(
        *(store.ack(user, device, cid, n % 3 + 1) for n, (user, device) in enumerate(devices))
    )

    assert dropped == [n % 3 + 1 for n in range(30)]
    left = [keys(await store.load(user, device)) for user, device in devices]
    assert left == [[(cid, seq) for seq in range(n % 3 + 2, 4)] for n in range(30)]


async def test_devices_are_kept_apart_even_when_ids_contain_separators(new_store: NewStore) -> None:
    store, tag, c = new_store(), uid("x"), uid("c")
    await store.add(f"{tag}:a", "b:c", [message(c, 1)])
    await store.add(f"{tag}:a:b", "c", [message(c, 2)])
    await store.add(f"{tag}:a", "other", [message(c, 3)])
    await store.ack(f"{tag}:a:b", "c", c, 2)

    assert keys(await store.load(f"{tag}:a", "b:c")) == [(c, 1)]
    assert await store.load(f"{tag}:a:b", "c") == Pending([], {c: 2})
    assert keys(await store.load(f"{tag}:a", "other")) == [(c, 3)]


async def test_a_full_set_drops_its_oldest_frames_first(new_store: NewStore) -> None:
    store, u, c, other = new_store(capacity=3), uid("u"), uid("c"), uid("c")
    await store.add(u, "d", [message(c, 5), message(other, 1)])
    await store.add(u, "d", [message(c, 1)])
    await store.add(u, "d", [message(c, 5)])  # known already: keeps its age
    await store.add(u, "d", [message(c, 6), message(c, 7)])

    assert keys(await store.load(u, "d")) == [(c, 1), (c, 6), (c, 7)]


async def test_one_push_to_many_devices_records_each_of_them(new_store: NewStore) -> None:
    """A group's push: one frame for every member's devices, more devices than one pipeline carries."""
    store, cid, other = new_store(), new_id(), new_id()
    devices = [(uid(f"member{n}"), f"d{n % 3}") for n in range(600)]
    shared = message(cid, 7, "to everyone")
    await store.ack(*devices[5], cid, 7)  # acked already (a retransmit that overtook): not recorded again

    await store.add_many({device: [shared, message(other, n + 1)] for n, device in enumerate(devices)})

    loaded = [await store.load(user, device) for user, device in devices]
    assert [keys(p) for p in loaded] == [
        [(other, n + 1)] if n == 5 else sorted([(cid, 7), (other, n + 1)]) for n in range(600)
    ]
    assert all(frame == shared for p in loaded for frame in p.frames if frame["conversation_id"] == cid)
