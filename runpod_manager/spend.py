"""The spend ledger: today's spend of a config's pods, held in its state record. Pure: no I/O, no clock.

A pass must cost one API call and billing lags, so spend is accrued from cost × time on every observation
(`accrue`) and corrected by RunPod's billing when it is due (`billing_due`, `record_billing`). Pods ended
earlier today stay in the total (`pod_ended`). `today_usd` is the one derivation of "spend today": the
planner enforces it, and `rpm status`, `/health` and the dashboard show it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import PodRecord

# Statuses in which a pod holds (and bills) a GPU.
BILLED_STATUSES = frozenset({PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING})
# Above this share of the cap a pass asks billing every time: an estimate must not be what lets a pod
# run past the cap.
NEAR_CAP_SHARE = 0.5


def roll_day(record: PodRecord, today: date) -> None:
    """A new local day starts an empty ledger."""
    if record.spend_day != today.isoformat():
        record.spend_day, record.spend_usd, record.spend_accounted_at = today.isoformat(), 0.0, None
        record.spend_of_ended_pods_usd, record.billed_usd, record.billing_checked_at = 0.0, 0.0, None


def accrue(record: PodRecord, pod: Pod | None, now: datetime, day_start: datetime) -> None:
    """Add the observed pod's cost × time since the last accounting (never before the local midnight)."""
    if pod is not None and pod.status in BILLED_STATUSES and pod.cost_per_hour > 0:
        since = max(record.spend_accounted_at or pod.started_at or pod.created_at or now, day_start)
        if now > since:
            record.spend_usd += pod.cost_per_hour * (now - since).total_seconds() / 3600.0
    record.spend_accounted_at = now
    record.cost_per_hour = pod.cost_per_hour if pod is not None else 0.0


def billing_due(record: PodRecord, now: datetime, *, cap_usd: float, check_seconds: float) -> bool:
    """Whether this pass should ask RunPod's billing (an API call): near the cap, or every check_seconds."""
    if not cap_usd:
        return False
    if record.spend_usd >= cap_usd * NEAR_CAP_SHARE or record.billing_checked_at is None:
        return True
    return (now - record.billing_checked_at).total_seconds() >= check_seconds


def record_billing(record: PodRecord, billed_usd: float, now: datetime) -> None:
    record.billed_usd = billed_usd
    record.billing_checked_at = now


def pod_created(record: PodRecord, now: datetime) -> None:
    """A new pod starts its own part of the ledger; billing of a pod just created is 0, so the first check
    is due a full interval from now."""
    record.spend_accounted_at = now
    record.spend_of_ended_pods_usd = record.spend_usd
    record.billed_usd, record.billing_checked_at = 0.0, now


def pod_ended(record: PodRecord) -> None:
    """What billing saw of the ended pod stays in today's total once it is gone."""
    record.spend_usd = today_usd_unchecked(record)
    record.spend_of_ended_pods_usd = record.spend_usd
    record.billed_usd, record.billing_checked_at = 0.0, None


def today_usd(record: PodRecord, today: date) -> float:
    """Today's spend: pods ended earlier today as accounted, the current pod by whichever of the estimate and
    billing is higher. 0 when the ledger is of another day."""
    return today_usd_unchecked(record) if record.spend_day == today.isoformat() else 0.0


def account_today_usd(records: Iterable[PodRecord], today: date) -> float:
    """Today's spend of every pod in state (configured or not): what the account cap is held against."""
    return sum(today_usd(record, today) for record in records)


def today_usd_unchecked(record: PodRecord) -> float:
    current_estimate = record.spend_usd - record.spend_of_ended_pods_usd
    return record.spend_of_ended_pods_usd + max(current_estimate, record.billed_usd)
