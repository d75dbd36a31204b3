import pytest

from bench.stats import Summary, percentile, rate, series


def test_percentile_interpolates_between_the_closest_ranks() -> None:
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 25) == 20.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 99) == pytest.approx(39.7)


def test_percentile_ends_are_the_minimum_and_the_maximum() -> None:
    values = [3.0, 5.0, 8.0]
    assert percentile(values, 0) == 3.0
    assert percentile(values, 100) == 8.0


def test_percentile_of_one_sample_is_that_sample() -> None:
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_samples_and_out_of_range_quantiles() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_summary_sorts_its_samples_and_reports_the_usual_percentiles() -> None:
    summary = Summary.of(float(v) for v in range(100, 0, -1))  # 100..1, unsorted on purpose
    assert summary.count == 100
    assert summary.min == 1.0
    assert summary.max == 100.0
    assert summary.mean == 50.5
    assert summary.p50 == pytest.approx(50.5)
    assert summary.p99 == pytest.approx(99.01)


def test_summary_of_nothing_has_a_count_and_no_figures() -> None:
    summary = Summary.of([])
    assert summary.count == 0
    assert summary.p99 is None
    assert summary.scaled(1000.0).p99 is None


def test_scaled_summary_converts_seconds_to_milliseconds() -> None:
    summary = Summary.of([0.010, 0.020]).scaled(1000.0)
    assert summary.p50 == pytest.approx(15.0)
    assert summary.max == pytest.approx(20.0)
    assert summary.count == 2


def test_series_keeps_empty_seconds_so_a_stall_shows_as_a_gap() -> None:
    buckets = series([(0.1, 5.0), (0.9, 7.0), (2.5, 9.0)], width=1.0)
    assert [b.start for b in buckets] == [0.0, 1.0, 2.0]
    assert [b.count for b in buckets] == [2, 0, 1]
    assert buckets[0].max == 7.0
    assert buckets[1].p99 is None


def test_series_of_no_samples_is_empty() -> None:
    assert series([]) == []


def test_rate_of_an_empty_interval_is_zero() -> None:
    assert rate(10, 0.0) == 0.0
    assert rate(500, 2.0) == 250.0
