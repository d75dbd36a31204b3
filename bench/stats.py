"""Percentiles and per-second series of latency samples: the pure arithmetic of the reports."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

QUANTILES = (50.0, 95.0, 99.0)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ascending ``ordered``, interpolated linearly between the
    two closest ranks (numpy's default), so P50 of [1, 2] is 1.5 and P100 is the maximum."""
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0-100")
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Count, mean and the usual percentiles of one set of samples (None when there are none)."""

    count: int
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    min: float | None = None

    @classmethod
    def of(cls, samples: Iterable[float]) -> Summary:
        ordered = sorted(samples)
        if not ordered:
            return cls(0)
        return cls(
            count=len(ordered),
            mean=math.fsum(ordered) / len(ordered),
            p50=percentile(ordered, 50.0),
            p95=percentile(ordered, 95.0),
            p99=percentile(ordered, 99.0),
            max=ordered[-1],
            min=ordered[0],
        )

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (seconds to milliseconds: 1000)."""

        def scale(value: float | None) -> float | None:
            return None if value is None else value * factor

        return Summary(
            self.count,
            scale(self.mean),
            scale(self.p50),
            scale(self.p95),
            scale(self.p99),
            scale(self.max),
            scale(self.min),
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class Bucket:
    """One interval of a time series: when it starts (s from the run's start) and what fell in it."""

    start: float
    count: int
    p50: float | None
    p99: float | None
    max: float | None


def series(samples: Iterable[tuple[float, float]], *, width: float = 1.0) -> list[Bucket]:
    """``(time, value)`` samples grouped into buckets of ``width`` seconds, empty ones included, so a
    stall shows as a gap with count 0 rather than vanishing from the plot."""
    if width <= 0:
        raise ValueError("bucket width must be positive")
    grouped: dict[int, list[float]] = {}
    for at, value in samples:
        grouped.setdefault(math.floor(at / width), []).append(value)
    if not grouped:
        return []
    buckets = []
    for index in range(min(grouped), max(grouped) + 1):
        values = sorted(grouped.get(index, []))
        if values:
            buckets.append(
                Bucket(index * width, len(values), percentile(values, 50), percentile(values, 99), values[-1])
            )
        else:
            buckets.append(Bucket(index * width, 0, None, None, None))
    return buckets


def rate(count: int, seconds: float) -> float:
    """Events per second; 0 for an empty interval rather than a division error."""
    return count / seconds if seconds > 0 else 0.0
