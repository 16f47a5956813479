"""Billing: the ledger of billed stretches (`BillingSegment`), spend, and the v2 billing records in
hour/day/week/month/year buckets. A segment belongs to the pod that rented the GPUs (`pod_id`, the field the
state file stores)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

BUCKET_SIZES = ("hour", "day", "week", "month", "year")


def rfc3339(epoch_seconds: float) -> str:
    """UTC timestamp to RFC 3339 with a Z, whole seconds like RunPod's examples."""
    # Not strftime: its %Y drops the leading zeros of years before 1000 on glibc ("1-01-01T...").
    moment = datetime.fromtimestamp(math.floor(epoch_seconds), UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class BillingSegment:
    """A stretch of time during which a pod was billed at a fixed rate (an open one has end None)."""

    pod_id: str
    start: float
    end: float | None
    usd_per_hour: float
    bill_speed: float

    def amount_usd(self, window_start: float, window_end: float) -> float:
        end = window_end if self.end is None else min(self.end, window_end)
        seconds = end - max(self.start, window_start)
        return max(seconds, 0.0) * self.usd_per_hour * self.bill_speed / 3600.0


class Ledger:
    """Every billed stretch, in the order it opened."""

    def __init__(self) -> None:
        self.segments: list[BillingSegment] = []

    def open(self, pod_id: str, at: float, usd_per_hour: float, bill_speed: float) -> None:
        self.segments.append(BillingSegment(pod_id, at, None, usd_per_hour, bill_speed))

    def close(self, pod_id: str, at: float) -> None:
        for segment in self.segments:
            if segment.pod_id == pod_id and segment.end is None:
                segment.end = at

    def spend_usd(self, end: float, pod_id: str | None = None) -> float:
        """What was billed up to `end`, in all or for one pod."""
        return sum(segment.amount_usd(segment.start, end) for segment in self.segments
                   if pod_id is None or segment.pod_id == pod_id)

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(segment) for segment in self.segments]

    @staticmethod
    def parse(data: Any) -> list[BillingSegment]:
        """Segments from a state file (TypeError or ValueError when one has the wrong fields)."""
        return [BillingSegment(**segment) for segment in data]

    @staticmethod
    def check(segments: list[BillingSegment]) -> None:
        """ValueError when a loaded segment lacks its pod or has a non-numeric time or rate."""
        for segment in segments:
            numbers = (segment.start, segment.usd_per_hour, segment.bill_speed,
                       segment.start if segment.end is None else segment.end)
            if segment.pod_id is None or not all(is_number(n) for n in numbers):
                raise ValueError(f"not a sandbox state file (billing segment of pod {segment.pod_id!r} "
                                 "has a non-numeric field)")

    def pod_billing(
        self, *, now: float, bucket_size: str, start: float, end: float, pod_id: str | None
    ) -> dict[str, Any]:
        """ListPodBillingResponse over [start, end) (already aligned to bucket boundaries)."""
        amounts: dict[tuple[float, str], float] = {}
        order: dict[str, int] = {}
        for segment in self.segments:
            if pod_id is not None and segment.pod_id != pod_id:
                continue
            seg_end = min(now if segment.end is None else segment.end, end)
            seg_start = max(segment.start, start)
            if seg_end <= seg_start:
                continue
            order.setdefault(segment.pod_id, len(order))
            bucket = bucket_floor(seg_start, bucket_size)
            while bucket.timestamp() < seg_end:
                following = bucket_next(bucket, bucket_size)
                key = (bucket.timestamp(), segment.pod_id)
                piece = segment.amount_usd(max(seg_start, bucket.timestamp()),
                                           min(seg_end, following.timestamp()))
                amounts[key] = amounts.get(key, 0.0) + piece
                bucket = following
        records: list[dict[str, Any]] = []
        ordered = sorted(amounts.items(), key=lambda item: (item[0][0], order[item[0][1]]))
        for (bucket_start, record_pod), amount in ordered:
            bucket_end = bucket_next(datetime.fromtimestamp(bucket_start, UTC), bucket_size).timestamp()
            records.append({"startTime": rfc3339(bucket_start), "endTime": rfc3339(bucket_end),
                            "podId": record_pod, "totalAmount": amount, "gpuAmount": amount,
                            "cpuAmount": 0.0, "diskAmount": 0.0})
        total = sum(amount for amount in amounts.values())
        return {
            "records": records,
            "metadata": {
                "query": {"startTime": rfc3339(start), "endTime": rfc3339(end), "bucketSize": bucket_size,
                          "podId": pod_id},
                "recordCount": len(records),
                "uniquePodCount": len({r["podId"] for r in records}),
                "totals": {"totalAmount": total, "gpuAmount": total, "cpuAmount": 0.0, "diskAmount": 0.0},
            },
        }


BUCKET_SIZES = ("hour", "day", "week", "month", "year")


def bucket_floor(epoch_seconds: float, size: str) -> datetime:
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    if size == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if size == "day":
        return day
    if size == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if size == "month":
        return day.replace(day=1)
    if size == "year":
        return day.replace(month=1, day=1)
    raise ValueError(f"unknown bucket size {size!r}")


def bucket_next(start: datetime, size: str) -> datetime:
    if size == "hour":
        return start + timedelta(hours=1)
    if size == "day":
        return start + timedelta(days=1)
    if size == "week":
        return start + timedelta(weeks=1)
    if size == "month":
        if start.month == 12:
            return start.replace(year=start.year + 1, month=1)
        return start.replace(month=start.month + 1)
    return start.replace(year=start.year + 1)


def bucket_ceil(epoch_seconds: float, size: str) -> datetime:
    floor = bucket_floor(epoch_seconds, size)
    return floor if floor.timestamp() == epoch_seconds else bucket_next(floor, size)
