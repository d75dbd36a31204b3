"""Leader election on a Lease: one holder at a time, judged by this process's own clock; a standby takes over only
after the holder stopped renewing for the Lease's duration, or at once when the holder released it."""

from __future__ import annotations

import asyncio

import pytest
from im_operator.election import LeaderElector, LeaseSettings
from im_operator.kube import ApiError
from im_operator.reconcile import Reconciler

from tests.unit.operator.fake_kube import FakeKube


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(kube: FakeKube, clock: Clock, identity: str, **timing: float) -> LeaderElector:
    settings = LeaseSettings(name="courier-operator", namespace="ops", identity=identity, duration_s=15, **timing)
    return LeaderElector(kube, settings, clock=clock)  # type: ignore[arg-type]


def holder(kube: FakeKube) -> str | None:
    return kube.objects[("Lease", "ops", "courier-operator")]["spec"]["holderIdentity"]


async def test_a_standby_takes_over_only_after_the_holder_stopped_renewing_for_the_duration() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = elector(kube, clock, "a"), elector(kube, clock, "b")

    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 10
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()  # b sees the renewal: its wait starts again from now
    clock.now += 14
    assert not await b.try_acquire_or_renew()
    clock.now += 2  # 16s since b last saw the record change: expired
    assert await b.try_acquire_or_renew()
    assert holder(kube) == "b"
    assert kube.objects[("Lease", "ops", "courier-operator")]["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew()  # a sees b's fresh record


async def test_a_released_lease_is_taken_at_once() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = elector(kube, clock, "a"), elector(kube, clock, "b")
    await a.acquire()
    assert not await b.try_acquire_or_renew()

    await a.release()

    assert holder(kube) is None
    assert await b.try_acquire_or_renew()


async def test_of_two_candidates_writing_the_same_read_only_one_wins() -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, clock, "a")
    await a.acquire()
    await a.release()
    # b's write lands between a's read and a's write: a's write names a stale resourceVersion.
    lease = kube.objects[("Lease", "ops", "courier-operator")]
    kube.before_write = lambda: kube.put({**lease, "spec": {**lease["spec"], "holderIdentity": "b"}})

    assert not await a.try_acquire_or_renew()
    assert holder(kube) == "b"


async def test_a_leader_that_cannot_renew_steps_down_within_the_renew_deadline() -> None:
    kube = FakeKube()
    a = LeaderElector(
        kube,  # type: ignore[arg-type]
        LeaseSettings("courier-operator", "ops", "a", duration_s=1.0, renew_deadline_s=0.3, retry_period_s=0.05),
    )
    await a.acquire()
    kube.failing = ApiError(0, "Unreachable", "connection refused")

    await asyncio.wait_for(a.hold(), timeout=5)

    assert not a.leading


def test_timings_must_leave_the_holder_time_to_step_down() -> None:
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        LeaseSettings("l", "ns", "a", duration_s=10, renew_deadline_s=10, retry_period_s=2)


async def test_a_leader_past_its_renew_deadline_makes_no_pass_at_all() -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, clock, "a")
    await a.acquire()
    assert a.still_leading()
    clock.now += 11  # frozen past the renew deadline (10 s): the renewal loop has not even run yet
    assert not a.still_leading()

    imcluster = {
        "apiVersion": "im.courier.dev/v1alpha1",
        "kind": "IMCluster",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"image": "courier:1"},
    }
    kube.put(imcluster)
    written = dict(kube.objects)
    outcome = await Reconciler(kube, leading=a.still_leading).reconcile(imcluster)  # type: ignore[arg-type]

    assert not outcome.ready and "Lease" in outcome.message
    assert kube.objects == written  # no child, no Secret, no status
