"""Ring.node_for with nodes to avoid: the owner the ring without them gives, so a socket sent elsewhere while its node
is away does not move again once the ring drops that node."""

from __future__ import annotations

import pytest

from services.common.ids import new_id
from services.common.ring import Ring


def test_avoiding_a_member_gives_the_owner_of_the_ring_without_it() -> None:
    full = Ring.of(["delivery-0", "delivery-1", "delivery-2", "delivery-3"])
    without = Ring.of(["delivery-0", "delivery-2", "delivery-3"])
    keys = [new_id() for _ in range(2000)]
    assert [full.node_for(k, avoid={"delivery-1"}) for k in keys] == [without.node_for(k) for k in keys]
    moved = [k for k in keys if full.node_for(k) != full.node_for(k, avoid={"delivery-1"})]
    assert moved and all(full.node_for(k) == "delivery-1" for k in moved), "only the avoided node's keys move"


def test_avoiding_every_member_is_an_error_not_a_guess() -> None:
    ring = Ring.of(["delivery-0", "delivery-1"])
    with pytest.raises(LookupError):
        ring.node_for("someone", avoid={"delivery-0", "delivery-1"})
