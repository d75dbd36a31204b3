import pytest

from bench.pacing import Pacer, run_paced


def test_first_event_is_due_at_the_start() -> None:
    pacer = Pacer(10.0, start=100.0)
    assert pacer.due(99.99) == 0
    assert pacer.due(100.0) == 1
    assert pacer.next_at() == pytest.approx(100.1)


def test_events_follow_the_schedule_whatever_the_caller_did_in_between() -> None:
    pacer = Pacer(10.0, start=0.0)
    assert pacer.due(0.0) == 1
    assert pacer.due(0.05) == 0
    assert pacer.due(0.35) == 3  # events at 0.1, 0.2 and 0.3 are due: an open loop catches up
    assert pacer.fired == 4


def test_falling_far_behind_skips_the_oldest_events_and_counts_them() -> None:
    pacer = Pacer(100.0, start=0.0, max_lag_s=0.5)
    assert pacer.due(10.0) == 50  # 1001 were due; only half a second's worth is fired
    assert pacer.skipped == 951
    assert pacer.next_at() == pytest.approx(10.01)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(0.0, start=0.0)


async def test_run_paced_fires_the_scheduled_number_of_events_on_a_fake_clock() -> None:
    now = [0.0]
    fired: list[tuple[float, int]] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def fire(count: int) -> None:
        fired.append((now[0], count))

    await run_paced(Pacer(4.0, start=0.0), fire, until=2.0, clock=lambda: now[0], sleep=sleep)
    assert sum(count for _, count in fired) == 8  # 0, 0.25, ..., 1.75
    assert [at for at, _ in fired] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])


def test_an_event_due_exactly_now_fires_whatever_the_rounding() -> None:
    # Event 33433 is due at start + 33433/100.0, but (due - start) * 100.0 rounds to a hair below 33433: the
    # pacer must still fire it, or a caller that fires until next_at is ahead of now never gets there.
    start, rate, index = 134.36424411240122, 100.0, 33433
    pacer = Pacer(rate, start=start, max_lag_s=1e9)
    pacer.fired = index
    now = pacer.next_at()
    assert int((now - start) * rate) + 1 == index  # the rounding this is about
    assert pacer.due(now) == 1
    assert pacer.next_at() > now
