"""Properties of the planner over generated inputs: whatever the time, limits, record and observation.

The table tests in test_policy.py pin chosen scenarios; these check invariants that every plan must
keep — nothing is started and ended at once, a closed lease or a reached spend cap starts nothing,
every action says why, the same inputs give the same plan — and the cutoff arithmetic near DST changes.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from runpod_manager import spend
from runpod_manager.config import Config
from runpod_manager.policy import (
    ENDS,
    IDLE_CHECKED_STATUSES,
    STARTS,
    ActionKind,
    Activity,
    Limit,
    Observation,
    Options,
    Plan,
    cutoff_at,
    idle_ends_at,
    last_active_at,
    lease_deadline,
    lease_ends_at,
    limit_view,
    local_day,
    next_cutoff,
    plan,
    runtime_ends_at,
    start_refusal,
)
from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import Intent, Lease, PodRecord
from tests.unit.test_policy import (
    CONFIG_NAME,
    FOREIGN_IDS,
    FOREIGN_PODS,
    INSTALL,
    INTENT_NAME,
    INTENT_POD,
    MAIN,
    OLD,
    ORPHAN,
    Scenario,
    make_pod,
)

SETTINGS = settings(max_examples=200, deadline=None)
HOUR = 3600
DAY = 24 * HOUR

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia",
         "America/Havana", "America/Santiago")
# Instants near DST changes (and one ordinary day), so the generated times often straddle one.
ANCHORS = (
    datetime(2026, 6, 10, 12, 0, tzinfo=UTC),
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # New York springs forward; Havana too (05:00)
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),  # New York falls back; Havana too (05:00)
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # Berlin springs forward
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # Berlin falls back
    datetime(2026, 4, 4, 15, 0, tzinfo=UTC),  # Lord Howe falls back half an hour
    datetime(2026, 10, 3, 15, 30, tzinfo=UTC),  # Lord Howe springs forward half an hour
    datetime(2026, 9, 6, 4, 0, tzinfo=UTC),  # Santiago skips midnight
    datetime(2011, 12, 30, 10, 0, tzinfo=UTC),  # Apia skips a whole day
)
KNOWN_LIMITS = {"spend_cap", "cutoff", "runtime", "idle", "shutdown"}
# Kinds that act on one existing pod and so must name it.
TARGETED = {ActionKind.RESUME, ActionKind.REPLACE, ActionKind.STOP, ActionKind.TERMINATE,
            ActionKind.TERMINATE_ORPHAN, ActionKind.REPORT_ORPHAN, ActionKind.FORGET_POD, ActionKind.ADOPT}

instants = st.builds(lambda anchor, offset: anchor + timedelta(seconds=offset),
                     st.sampled_from(ANCHORS), st.integers(-3 * DAY, 3 * DAY))
wall_times = st.builds("{:02}:{:02}".format, st.integers(0, 23),
                       st.one_of(st.sampled_from([0, 15, 30, 45]), st.integers(0, 59)))
cutoffs = st.one_of(st.just(""), wall_times, wall_times)  # one config in three has no cutoff
# How long ago something happened, in seconds; negative is in the future (clock skew). One branch per
# scale, because hypothesis draws small integers far more often than large ones.
AGES = st.one_of(st.integers(0, 600), st.integers(600, 6 * HOUR), st.integers(6 * HOUR, 30 * HOUR),
                 st.integers(30 * HOUR, 3 * DAY), st.integers(-2 * HOUR, 0))
statuses = st.sampled_from(list(PodStatus))


@st.composite
def configs(draw: st.DrawFn) -> Config:
    limits = {
        "timezone": draw(st.sampled_from(ZONES)),
        "daily_cutoff": draw(cutoffs),
        "runtime_seconds": draw(st.one_of(st.integers(1, 2 * DAY), st.integers(HOUR, 2 * DAY),
                                          st.sampled_from([4 * HOUR, DAY, 2 * DAY]))),
        "idle_timeout_seconds": draw(st.one_of(st.just(0), st.integers(1, 3 * HOUR), st.integers(60, 1800))),
        "idle_action": draw(st.sampled_from(["stop", "terminate"])),
        "cutoff_action": draw(st.sampled_from(["stop", "terminate"])),
        "max_daily_spend_usd": draw(st.sampled_from([0.0, 5.0, 20.0, 50.0])),
        "on_resume_failure": draw(st.sampled_from(["replace", "fail"])),
        "sweep_orphans": draw(st.booleans()),
    }
    return Scenario(limits=limits).config()


def maybe_time(now: datetime) -> st.SearchStrategy[datetime | None]:
    """None, or a time some AGES before now (or a little after it)."""
    return st.one_of(st.none(), AGES.map(lambda age: now - timedelta(seconds=age)))


@dataclass(frozen=True)
class Inputs:
    now: datetime
    config: Config
    record: PodRecord
    observed: Observation
    activity: Activity
    options: Options

    def plan(self, now: datetime | None = None) -> Plan:
        return plan(now or self.now, self.config, self.record, self.observed, self.activity, self.options)


@st.composite
def inputs(draw: st.DrawFn, lease_open: bool | None = None) -> Inputs:
    now = draw(instants)
    config = draw(configs())
    has_lease = draw(st.booleans()) if lease_open is None else lease_open
    lease = None
    if has_lease:
        # Mostly in the past; sometimes a little in the future (a clock stepped back).
        opened_at = now - timedelta(seconds=draw(AGES))
        stored = lease_deadline(opened_at, config)  # as rpm start stores it
        deadline = draw(st.one_of(
            st.just(stored), st.just(stored),
            st.integers(1, 3 * DAY).map(lambda s: opened_at + timedelta(seconds=s)),  # from an older config
        ))
        lease = Lease(opened_at=opened_at, deadline=deadline, opened_by=draw(st.sampled_from(["start", "wake"])))
    pod_id = draw(st.sampled_from([None, MAIN, MAIN]))
    intent = draw(st.sampled_from([None, Intent(INTENT_NAME, now - timedelta(minutes=2))]))
    replacing = draw(st.sampled_from([None, OLD]))
    today = local_day(now, config.zone)
    # The record's pod may carry the intent's name: its id was saved but the intent not yet cleared.
    pod_name = draw(st.sampled_from(["rpm-llm-aaaaaa", INTENT_NAME])) if pod_id else None
    record = PodRecord(
        config_name=CONFIG_NAME, pod_id=pod_id, pod_name=pod_name, lease=lease,
        intent=intent, replacing_pod_id=replacing,
        lease_end_action=draw(st.sampled_from([None, "stop", "terminate"])),
        last_lease_end_reason=draw(st.sampled_from([None, "idle for 900 s"])),
        spend_cap_day=draw(st.sampled_from([None, today.isoformat(), (today - timedelta(days=1)).isoformat()])),
        proxy_wanted=draw(st.booleans()),
    )
    pod = None
    if pod_id is not None and draw(st.sampled_from([True, True, True, False])):  # False: RunPod says gone
        pod = Pod(id=pod_id, name=pod_name or "", status=draw(statuses), status_text="x", cost_per_hour=0.44,
                  created_at=draw(maybe_time(now)), started_at=draw(maybe_time(now)))
    replaced = None
    if replacing and draw(st.booleans()):
        replaced = make_pod(OLD, "rpm-llm-bbbbbb", draw(statuses))
    named = None
    if draw(st.sampled_from([True, True, False])):  # False: pods not listed this pass
        extra = []
        if draw(st.booleans()):
            extra.append(make_pod(INTENT_POD, INTENT_NAME, draw(statuses)))
        if draw(st.booleans()):
            extra.append(make_pod(ORPHAN, f"rpm-llm-{INSTALL}-5e5e5e", draw(statuses)))
        named = (*(p for p in (pod, replaced) if p is not None), *extra,
                 *(make_pod(foreign_id, name) for foreign_id, name in FOREIGN_PODS))
    observed = Observation(
        pod=pod, pod_observed=draw(st.sampled_from([True, True, True, False])),
        spend_today_usd=draw(st.one_of(st.just(0.0), st.floats(0.0, 60.0), st.floats(0.0, 60.0))),
        named_pods=named, install_id=INSTALL, replaced_pod=replaced,
        resume_refused=draw(st.booleans()), pod_ready=draw(st.booleans()),
        proxy_running=draw(st.sampled_from([None, True, False])),
    )
    activity = Activity(last_request_at=draw(maybe_time(now)), last_gpu_busy_at=draw(maybe_time(now)),
                        proxy_wanted=record.proxy_wanted)
    options = Options(report_orphans_only=draw(st.booleans()),
                      shutdown_action=draw(st.sampled_from(["stop", "terminate"])))
    return Inputs(now, config, record, observed, activity, options)


def spend_cap_reached(given_inputs: Inputs) -> bool:
    cap = given_inputs.config.limits.max_daily_spend_usd
    return bool(cap) and given_inputs.observed.spend_today_usd >= cap


# ------------------------------------------------------------------------------------ plan invariants


@SETTINGS
@given(inputs())
def test_no_pod_is_started_and_ended_in_one_plan(given_inputs: Inputs) -> None:
    result = given_inputs.plan()
    started = [a.pod_id for a in result.actions if a.kind in STARTS and a.pod_id]
    ended = [a.pod_id for a in result.actions if a.kind in ENDS | {ActionKind.TERMINATE_ORPHAN}]
    assert not set(started) & set(ended), result
    assert len(ended) == len(set(ended)), f"a pod is ended twice: {result}"
    # At most one new pod per pass: two would both bill.
    new_pods = [a for a in result.actions if a.kind in (ActionKind.CREATE, ActionKind.REPLACE)]
    assert len(new_pods) <= 1, result


@SETTINGS
@given(inputs(lease_open=False))
def test_a_closed_lease_starts_nothing(given_inputs: Inputs) -> None:
    kinds = given_inputs.plan().kinds()
    assert ActionKind.CLOSE_LEASE not in kinds
    assert not STARTS & set(kinds), kinds
    assert ActionKind.RESTART_PROXY not in kinds


@SETTINGS
@given(inputs(lease_open=True))
def test_a_closing_lease_starts_nothing(given_inputs: Inputs) -> None:
    result = given_inputs.plan()
    kinds = result.kinds()
    assert kinds.count(ActionKind.CLOSE_LEASE) <= 1, result
    if ActionKind.CLOSE_LEASE in kinds:
        assert not STARTS & set(kinds), result
        assert ActionKind.RESTART_PROXY not in kinds, result


def check_actions(result: Plan) -> None:
    ours = {MAIN, OLD, INTENT_POD, ORPHAN}
    for action in result.actions:
        assert isinstance(action.kind, ActionKind)
        assert action.kind in set(ActionKind)
        assert action.reason.strip(), f"{action.kind} has no reason"
        assert action.describe().startswith(action.kind.value)
        if action.kind is ActionKind.CLOSE_LEASE:
            assert action.limit in KNOWN_LIMITS, action
        if action.kind in TARGETED:
            assert action.pod_id, f"{action.kind} names no pod"
        assert action.pod_id is None or action.pod_id in ours, action
        assert action.pod_id not in FOREIGN_IDS
        idle = re.search(r"idle for (-?\d+) s", action.reason)
        assert idle is None or int(idle[1]) >= 0, action.reason


@SETTINGS
@given(inputs(lease_open=True))
def test_every_action_is_known_explained_and_aimed_at_our_pods_lease_open(given_inputs: Inputs) -> None:
    check_actions(given_inputs.plan())


@SETTINGS
@given(inputs(lease_open=False))
def test_every_action_is_known_explained_and_aimed_at_our_pods_no_lease(given_inputs: Inputs) -> None:
    check_actions(given_inputs.plan())


@SETTINGS
@given(inputs())
def test_plan_is_deterministic_and_does_not_touch_its_inputs(given_inputs: Inputs) -> None:
    # The record is the one mutable input (the executor updates it); Observation and Activity are frozen.
    record_before = copy.deepcopy(given_inputs.record)
    first = given_inputs.plan()
    assert given_inputs.record == record_before
    assert given_inputs.plan() == first
    # An equal copy of the record, and the same instant written in another zone, are the same input.
    assert replace(given_inputs, record=record_before).plan() == first
    assert given_inputs.plan(given_inputs.now.astimezone(ZoneInfo("Asia/Kolkata"))) == first


@SETTINGS
@given(inputs())
def test_a_reached_spend_cap_starts_nothing_and_ends_the_lease(given_inputs: Inputs) -> None:
    if not spend_cap_reached(given_inputs):
        return
    result = given_inputs.plan()
    assert not STARTS & set(result.kinds()), result
    if given_inputs.record.lease is not None:
        assert result.actions[0].kind is ActionKind.CLOSE_LEASE and result.actions[0].limit == "spend_cap"
    assert start_refusal(given_inputs.now, given_inputs.config, given_inputs.record,
                         given_inputs.observed.spend_today_usd) is not None


@SETTINGS
@given(inputs(lease_open=True), st.integers(0, 3 * DAY))
def test_cutoff_and_runtime_stay_passed_on_later_runs(given_inputs: Inputs, later_seconds: int) -> None:
    """A laptop that sleeps through the next runs cannot reopen what a time limit ended."""
    result = given_inputs.plan()
    closing = [a for a in result.actions if a.kind is ActionKind.CLOSE_LEASE]
    if not closing or closing[0].limit not in ("cutoff", "runtime"):
        return
    later = given_inputs.plan(given_inputs.now + timedelta(seconds=later_seconds))
    [close] = [a for a in later.actions if a.kind is ActionKind.CLOSE_LEASE]
    assert close.limit in ("spend_cap", "cutoff", "runtime"), later


@SETTINGS
@given(inputs(lease_open=True), st.integers(0, 3 * DAY))
def test_a_lease_open_when_the_cutoff_passed_is_ended_however_late(given_inputs: Inputs, late_seconds: int) -> None:
    lease = given_inputs.record.lease
    assert lease is not None
    cutoff_at = next_cutoff(lease.opened_at, given_inputs.config)
    if cutoff_at is None or spend_cap_reached(given_inputs) or lease.opened_at > given_inputs.now:
        return
    result = given_inputs.plan(max(given_inputs.now, cutoff_at) + timedelta(seconds=late_seconds))
    closing = [a for a in result.actions if a.kind is ActionKind.CLOSE_LEASE]
    assert [a.limit for a in closing] == ["cutoff"], result


@SETTINGS
@given(inputs(lease_open=True))
def test_future_activity_never_makes_a_lease_idle(given_inputs: Inputs) -> None:
    now, lease, activity = given_inputs.now, given_inputs.record.lease, given_inputs.activity
    assert lease is not None
    times = [t for t in (lease.opened_at, activity.last_request_at, activity.last_gpu_busy_at) if t is not None]
    if max(times) <= now:
        return
    limits = [a.limit for a in given_inputs.plan().actions if a.kind is ActionKind.CLOSE_LEASE]
    assert "idle" not in limits


@SETTINGS
@given(inputs(lease_open=True))
def test_the_planner_ends_a_lease_exactly_at_the_deadlines_status_shows(given_inputs: Inputs) -> None:
    """The rules and `limit_view` (rpm status, the dashboard) use one derivation of each deadline: the lease is
    closed by cutoff or runtime iff its end (`lease_ends_at`) has come, else by idle iff `idle_ends_at` has."""
    now, config, lease = given_inputs.now, given_inputs.config, given_inputs.record.lease
    assert lease is not None
    if spend_cap_reached(given_inputs):
        return
    view = limit_view(now, config, given_inputs.record, given_inputs.activity)
    assert view.deadline == lease_ends_at(now, config, lease)
    assert (view.runtime_ends_at, view.cutoff_at) == (runtime_ends_at(lease.opened_at, config),
                                                      cutoff_at(now, config, lease))
    idle_end = idle_ends_at(now, config, last_active_at(now, lease, given_inputs.activity))
    assert view.idle_ends_at == idle_end
    observed = given_inputs.observed
    pod = observed.pod if observed.pod_observed else None
    idle_checked = observed.pod_observed and (pod is None or pod.status in IDLE_CHECKED_STATUSES)
    expected = ([Limit.CUTOFF, Limit.RUNTIME] if now >= lease_ends_at(now, config, lease)
                else [Limit.IDLE] if idle_end is not None and now >= idle_end and idle_checked else [])
    closing = [a.limit for a in given_inputs.plan().actions if a.kind is ActionKind.CLOSE_LEASE]
    assert closing == [] if not expected else (len(closing) == 1 and closing[0] in expected), given_inputs


@SETTINGS
@given(inputs())
def test_a_closing_lease_carries_how_its_pod_ends_as_the_config_says_for_that_limit(given_inputs: Inputs) -> None:
    limits = given_inputs.config.limits
    by_limit = {Limit.SPEND_CAP: "terminate", Limit.CUTOFF: limits.cutoff_action,
                Limit.RUNTIME: limits.cutoff_action, Limit.IDLE: limits.idle_action, Limit.GONE: "terminate"}
    for action in given_inputs.plan().actions:
        if action.kind is ActionKind.CLOSE_LEASE:
            assert action.limit is not None and action.lease_end is not None, action
            assert action.lease_end in (ActionKind.STOP, ActionKind.TERMINATE)
            assert action.lease_end.value == by_limit[action.limit], action


# ------------------------------------------------------------------------------------ time arithmetic


@SETTINGS
@given(configs(), instants)
def test_lease_deadline_is_after_opening_and_within_the_runtime(config: Config, opened_at: datetime) -> None:
    deadline = lease_deadline(opened_at, config)
    runtime = timedelta(seconds=config.limits.runtime_seconds)
    assert opened_at < deadline <= opened_at + runtime
    if config.cutoff_time is not None:
        assert deadline <= opened_at + timedelta(hours=26)  # a cutoff comes at least once a day


@SETTINGS
@given(configs(), instants)
def test_cutoffs_come_once_a_day_at_the_configured_wall_time(config: Config, after: datetime) -> None:
    cutoff = config.cutoff_time
    first = next_cutoff(after, config)
    if cutoff is None:
        assert first is None
        return
    assert first is not None
    assert after < first <= after + timedelta(hours=26)
    second = next_cutoff(first, config)
    assert second is not None
    # One cutoff a day: neither twice on a fall-back day nor skipped on a spring-forward day.
    assert timedelta(hours=22) <= second - first <= timedelta(hours=26)
    for instant in (first, second):
        local = instant.astimezone(config.zone)
        exists = _exists(datetime.combine(local.date(), cutoff), config.zone)
        if exists:
            assert local.time() == cutoff, (instant, local)
        else:
            # A skipped wall time is moved forward past the gap, by at most the gap (an hour in these zones).
            asked = datetime.combine(local.date(), cutoff)
            assert asked < local.replace(tzinfo=None) <= asked + timedelta(hours=1), (instant, local)


def _exists(naive: datetime, zone: ZoneInfo | None) -> bool:
    aware = naive.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive


@SETTINGS
@given(configs(), instants, st.integers(1, 3 * DAY))
def test_cap_day_refusal_ends_exactly_when_the_local_date_changes(config: Config, capped_at: datetime,
                                                                 later_seconds: int) -> None:
    cap = config.limits.max_daily_spend_usd
    if not cap:
        return
    day = local_day(capped_at, config.zone).isoformat()
    record = PodRecord(config_name=CONFIG_NAME, spend_day=day, spend_usd=cap, spend_of_ended_pods_usd=cap,
                       spend_cap_day=day)
    later = capped_at + timedelta(seconds=later_seconds)
    refused = start_refusal(later, config, record, spend.today_usd(record, local_day(later, config.zone))) is not None
    assert refused == (local_day(later, config.zone) == local_day(capped_at, config.zone))
