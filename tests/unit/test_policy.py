"""The planner's rules, one table row per rule and one per pair of rules.

Each row builds a scenario from a healthy base (an open lease, its pod RUNNING, a request a minute ago)
plus the "triggers" of the rules it exercises, and pins the whole plan as a list of short strings:
`close_lease:<limit>` or `<kind>[:<pod id>]`. A pair row shows that the higher-priority rule wins and
that the lower one does not also fire a conflicting action (a start while the lease ends, a second
close, a stop where the winner terminates).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runpod_manager import podspec
from runpod_manager.config import Config
from runpod_manager.policy import (
    ENDS,
    STARTS,
    Action,
    ActionKind,
    Activity,
    Observation,
    Options,
    Plan,
    lease_deadline,
    plan,
)
from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import Intent, Lease, PodRecord

NOW = datetime(2026, 6, 10, 12, 0, 0, tzinfo=UTC)
CONFIG_NAME = "llm"  # pods are rpm-llm-<install id>-<random>
INSTALL = "lq7xw2ab"  # this state directory's install id
MAIN = "pod-main"
OLD = "pod-old"
INTENT_NAME = f"rpm-llm-{INSTALL}-0a0a0a"
INTENT_POD = "pod-intent"
ORPHAN = "pod-orphan"
# Present in every listing: none of them may ever appear in an action.
FOREIGN_PODS = (
    ("pod-notebook", "my-notebook"),  # no prefix at all
    ("pod-other-config", f"rpm-llm-big-{INSTALL}-1b1b1b"),  # config "llm-big": shares the "rpm-llm-" prefix
    ("pod-other-rpm", f"rpm-other-{INSTALL}-2c2c2c"),  # another config
    ("pod-lookalike", f"rpm-llmx-{INSTALL}-3d3d3d"),  # "rpm-llm" without the dash
    ("pod-other-install", "rpm-llm-zzzzzzzz-4e4e4e"),  # this pod's name, another rpm install's id
    ("pod-older-rpm", "rpm-llm-6f6f6f"),  # an older rpm's naming (no install id), held by no record
    ("pod-config-like-id", f"rpm-llm-{INSTALL}-{INSTALL}-7a7a7a"),  # config "llm-<id>", not "llm"
)
FOREIGN_IDS = {pod_id for pod_id, _ in FOREIGN_PODS}


def make_pod(pod_id: str, name: str, status: PodStatus = PodStatus.RUNNING) -> Pod:
    return Pod(id=pod_id, name=name, status=status, status_text=status.value, cost_per_hour=0.44)


@dataclass(frozen=True)
class Scenario:
    """Everything plan() sees, as plain fields with healthy defaults."""

    limits: dict[str, Any] = field(default_factory=dict)
    opened_at: datetime | None = NOW - timedelta(minutes=30)  # None: no lease
    deadline: datetime | None = None  # None: lease_deadline(opened_at, config)
    pod_id: str | None = MAIN
    pod_status: PodStatus | None = PodStatus.RUNNING  # None: RunPod says the pod does not exist
    pod_observed: bool = True
    spend: float = 0.0
    intent: str | None = None
    named: tuple[Pod, ...] = ()  # extra pods in the prefix listing (besides the record's and FOREIGN_PODS)
    listed: bool = True  # False: pods were not listed this pass (named_pods=None)
    resume_refused: bool = False
    replacing: PodStatus | None = None  # status of the old pod kept while its replacement starts
    pod_ready: bool = False
    last_request_at: datetime | None = NOW - timedelta(minutes=1)
    last_gpu_busy_at: datetime | None = None
    proxy_wanted: bool = False
    proxy_running: bool | None = None
    lease_end_action: str | None = None
    last_status: str | None = None  # what state last saw of the pod
    account_spend: float = 0.0  # every pod of the config together
    adopted: bool = False  # [pod] pod_id: made outside rpm
    options: Options = field(default_factory=Options)

    def merged(self, trigger: dict[str, Any]) -> Scenario:
        changes = dict(trigger)
        if "limits" in changes:
            changes["limits"] = {**self.limits, **changes["limits"]}
        if "named" in changes:
            changes["named"] = self.named + changes["named"]
        return replace(self, **changes)

    def config(self) -> Config:
        base = Config()
        limits = {"timezone": "UTC", "daily_cutoff": "00:00", "runtime_seconds": 24 * 3600,
                  "idle_timeout_seconds": 900, "idle_action": "stop", "cutoff_action": "terminate",
                  "max_daily_spend_usd": 20.0, "on_resume_failure": "replace", "sweep_orphans": True,
                  **self.limits}
        pod = replace(base.pod, name=CONFIG_NAME, pod_id=MAIN if self.adopted else "")
        return replace(base, pod=pod, limits=replace(base.limits, **limits))

    def inputs(self) -> tuple[Config, PodRecord, Observation, Activity]:
        config = self.config()
        lease = None
        if self.opened_at is not None:
            deadline = self.deadline or lease_deadline(self.opened_at, config)
            lease = Lease(opened_at=self.opened_at, deadline=deadline)
        record = PodRecord(
            config_name=CONFIG_NAME, pod_id=self.pod_id, pod_name="rpm-llm-aaaaaa" if self.pod_id else None,
            lease=lease, intent=Intent(self.intent, NOW - timedelta(minutes=2)) if self.intent else None,
            replacing_pod_id=OLD if self.replacing else None, lease_end_action=self.lease_end_action,
            proxy_wanted=self.proxy_wanted, last_status=self.last_status,
        )
        pod = None
        if self.pod_id is not None and self.pod_status is not None:
            pod = make_pod(self.pod_id, "rpm-llm-aaaaaa", self.pod_status)
        replaced = make_pod(OLD, "rpm-llm-bbbbbb", self.replacing) if self.replacing else None
        named = None
        if self.listed:
            named = tuple(p for p in (pod, replaced) if p is not None) + self.named + tuple(
                make_pod(pod_id, name) for pod_id, name in FOREIGN_PODS)
        observation = Observation(
            pod=pod, pod_observed=self.pod_observed, spend_today_usd=self.spend,
            account_spend_today_usd=self.account_spend, named_pods=named, install_id=INSTALL,
            replaced_pod=replaced, resume_refused=self.resume_refused, pod_ready=self.pod_ready,
            proxy_running=self.proxy_running,
        )
        activity = Activity(last_request_at=self.last_request_at, last_gpu_busy_at=self.last_gpu_busy_at,
                            proxy_wanted=self.proxy_wanted)
        return config, record, observation, activity

    def plan(self, now: datetime = NOW) -> Plan:
        config, record, observation, activity = self.inputs()
        return plan(now, config, record, observation, activity, self.options)


def summary(result: Plan) -> list[str]:
    def one(action: Action) -> str:
        if action.kind is ActionKind.CLOSE_LEASE:
            return f"close_lease:{action.limit}"
        return f"{action.kind.value}:{action.pod_id}" if action.pod_id else action.kind.value
    return [one(action) for action in result.actions]


def check_sane(result: Plan) -> None:
    """What every plan must satisfy, whatever the row."""
    for action in result.actions:
        assert action.reason.strip(), f"{action.kind} has no reason"
        assert action.pod_id not in FOREIGN_IDS, f"{action.describe()} touches a pod that is not ours"
    kinds = result.kinds()
    if ActionKind.CLOSE_LEASE in kinds:
        assert not STARTS & set(kinds), f"starts while the lease ends: {summary(result)}"
        assert kinds.count(ActionKind.CLOSE_LEASE) == 1
    ended = [a.pod_id for a in result.actions if a.kind in ENDS]
    assert len(ended) == len(set(ended)), f"a pod is ended twice: {summary(result)}"
    started = {a.pod_id for a in result.actions if a.kind in STARTS and a.pod_id}
    assert not started & set(ended), f"a pod is started and ended: {summary(result)}"


def run(*triggers: dict[str, Any], base: Scenario | None = None) -> list[str]:
    scenario = base or Scenario()
    for trigger in triggers:
        scenario = scenario.merged(trigger)
    result = scenario.plan()
    check_sane(result)
    return summary(result)


# ---------------------------------------------------------------------------------------- triggers
# One per rule; each makes its rule fire on top of the healthy base and nothing else.

SPEND_CAP = {"spend": 25.0}  # cap is $20
CUTOFF = {"opened_at": datetime(2026, 6, 9, 23, 30, tzinfo=UTC)}  # 00:00 UTC has passed since
RUNTIME = {"limits": {"runtime_seconds": 600}}  # opened 30 min ago
IDLE = {"last_request_at": NOW - timedelta(minutes=20)}  # idle_timeout_seconds is 900
RECOVERY = {"pod_status": None}  # the lease's pod vanished
INTENT = {"pod_id": None, "pod_status": None, "intent": INTENT_NAME,
          "named": (make_pod(INTENT_POD, INTENT_NAME, PodStatus.PROVISIONING),)}
ORPHANS = {"named": (make_pod(ORPHAN, f"rpm-llm-{INSTALL}-5e5e5e"),)}
PROXY = {"proxy_wanted": True, "proxy_running": False}

RULES: dict[str, dict[str, Any]] = {
    "spend_cap": SPEND_CAP, "cutoff": CUTOFF, "runtime": RUNTIME, "idle": IDLE, "recovery": RECOVERY,
    "intent": INTENT, "orphans": ORPHANS, "proxy": PROXY,
}


# ------------------------------------------------------------------------------------ single rules

SINGLE_ROWS = [
    ("healthy lease: nothing to do", [], []),
    # 1. spend cap
    ("spend_cap", [SPEND_CAP], ["close_lease:spend_cap", f"terminate:{MAIN}"]),
    ("spend_cap: exactly at the cap", [{"spend": 20.0}], ["close_lease:spend_cap", f"terminate:{MAIN}"]),
    ("spend_cap: just below the cap", [{"spend": 19.99}], []),
    ("spend_cap: 0 disables it", [SPEND_CAP, {"limits": {"max_daily_spend_usd": 0.0}}], []),
    ("spend_cap: terminates a stopped pod kept without a lease",
     [SPEND_CAP, {"opened_at": None, "pod_status": PodStatus.EXITED, "lease_end_action": "stop"}],
     [f"terminate:{MAIN}"]),
    ("spend_cap: no lease and no pod", [SPEND_CAP, {"opened_at": None, "pod_id": None, "pod_status": None}],
     []),
    ("spend_cap: pod not observed: the lease closes and the pod is ended by id",
     [SPEND_CAP, {"pod_observed": False}], ["close_lease:spend_cap", f"terminate:{MAIN}"]),
    ("spend_cap: the pod being replaced goes too", [SPEND_CAP, {"replacing": PodStatus.EXITED}],
     ["close_lease:spend_cap", f"terminate:{MAIN}", f"terminate:{OLD}"]),
    # 2. daily cutoff
    ("cutoff", [CUTOFF], ["close_lease:cutoff", f"terminate:{MAIN}"]),
    ("cutoff: cutoff_action stop", [CUTOFF, {"limits": {"cutoff_action": "stop"}}],
     ["close_lease:cutoff", f"stop:{MAIN}"]),
    ("cutoff: stop of a pod in ERROR terminates it",
     [CUTOFF, {"limits": {"cutoff_action": "stop"}, "pod_status": PodStatus.ERROR}],
     ["close_lease:cutoff", f"terminate:{MAIN}"]),
    ("cutoff: stop of a pod already stopped only closes the lease",
     [CUTOFF, {"limits": {"cutoff_action": "stop"}, "pod_status": PodStatus.EXITED}], ["close_lease:cutoff"]),
    ("cutoff: pod not observed: the lease closes and the pod is ended by id", [CUTOFF, {"pod_observed": False}],
     ["close_lease:cutoff", f"terminate:{MAIN}"]),
    ("cutoff: pod not observed, cutoff_action stop", [CUTOFF, {"pod_observed": False,
                                                               "limits": {"cutoff_action": "stop"}}],
     ["close_lease:cutoff", f"stop:{MAIN}"]),
    ("cutoff: empty daily_cutoff disables it", [CUTOFF, {"limits": {"daily_cutoff": ""}}], []),
    # 3. runtime limit
    ("runtime", [RUNTIME], ["close_lease:runtime", f"terminate:{MAIN}"]),
    ("runtime: the stored lease deadline counts even if runtime_seconds was raised",
     [{"deadline": NOW - timedelta(seconds=1)}], ["close_lease:runtime", f"terminate:{MAIN}"]),
    ("runtime: a lowered runtime_seconds counts even if the stored deadline is later",
     [RUNTIME, {"deadline": NOW + timedelta(hours=5)}], ["close_lease:runtime", f"terminate:{MAIN}"]),
    ("runtime: one second before the deadline", [{"limits": {"runtime_seconds": 1801}}], []),
    ("runtime: exactly at the deadline", [{"limits": {"runtime_seconds": 1800}}],
     ["close_lease:runtime", f"terminate:{MAIN}"]),
    # 4. idle
    ("idle", [IDLE], ["close_lease:idle", f"stop:{MAIN}"]),
    ("idle: idle_action terminate", [IDLE, {"limits": {"idle_action": "terminate"}}],
     ["close_lease:idle", f"terminate:{MAIN}"]),
    ("idle: exactly idle_timeout_seconds", [{"last_request_at": NOW - timedelta(seconds=900)}],
     ["close_lease:idle", f"stop:{MAIN}"]),
    ("idle: one second short", [{"last_request_at": NOW - timedelta(seconds=899)}], []),
    ("idle: 0 disables it", [IDLE, {"limits": {"idle_timeout_seconds": 0}}], []),
    ("idle: GPU busy within the window keeps the pod", [IDLE, {"last_gpu_busy_at": NOW - timedelta(minutes=2)}],
     []),
    ("idle: GPU busy before the window does not", [IDLE, {"last_gpu_busy_at": NOW - timedelta(minutes=30)}],
     ["close_lease:idle", f"stop:{MAIN}"]),
    ("idle: counted from the lease's opening when it is later than the last request",
     [{"opened_at": NOW - timedelta(minutes=5), "last_request_at": NOW - timedelta(hours=3)}], []),
    ("idle: no request ever, counted from the opening",
     [{"opened_at": NOW - timedelta(minutes=16), "last_request_at": None}], ["close_lease:idle", f"stop:{MAIN}"]),
    ("idle: a booting pod is not idle", [IDLE, {"pod_status": PodStatus.STARTING}], []),
    ("idle: a pod of unknown status is not idle", [IDLE, {"pod_status": PodStatus.UNKNOWN}], []),
    ("idle: pod not observed", [IDLE, {"pod_observed": False}], []),
    # 5. recovery
    ("recovery: pod vanished", [RECOVERY], [f"forget_pod:{MAIN}", "create"]),
    ("recovery: pod TERMINATED", [{"pod_status": PodStatus.TERMINATED}], [f"forget_pod:{MAIN}", "create"]),
    ("recovery: pod in ERROR", [{"pod_status": PodStatus.ERROR}],
     [f"terminate:{MAIN}", f"forget_pod:{MAIN}", "create"]),
    ("recovery: pod EXITED unexpectedly", [{"pod_status": PodStatus.EXITED}], [f"resume:{MAIN}"]),
    ("recovery: resume refused, replace", [{"pod_status": PodStatus.EXITED, "resume_refused": True}],
     [f"replace:{MAIN}"]),
    ("recovery: resume refused, on_resume_failure fail",
     [{"pod_status": PodStatus.EXITED, "resume_refused": True, "limits": {"on_resume_failure": "fail"}}],
     [f"alarm:{MAIN}"]),
    ("recovery: replacement not ready keeps the old pod",
     [{"pod_status": PodStatus.RUNNING, "replacing": PodStatus.EXITED, "pod_ready": False}], []),
    ("recovery: replacement ready removes the old pod",
     [{"pod_status": PodStatus.RUNNING, "replacing": PodStatus.EXITED, "pod_ready": True}], [f"terminate:{OLD}"]),
    ("recovery: open lease without a pod", [{"pod_id": None, "pod_status": None}], ["create"]),
    ("recovery: pod not observed does nothing", [RECOVERY, {"pod_observed": False}], []),
    ("recovery: booting pod is left alone", [{"pod_status": PodStatus.PROVISIONING}], []),
    # 6. pending intent
    ("intent: adopt the pod found by name", [INTENT], [f"adopt:{INTENT_POD}"]),
    ("intent: no such pod, forget it and create", [{"pod_id": None, "pod_status": None, "intent": INTENT_NAME}],
     ["forget_intent", "create"]),
    ("intent: found pod without a lease is adopted and terminated", [INTENT, {"opened_at": None}],
     [f"adopt:{INTENT_POD}", f"terminate:{INTENT_POD}"]),
    ("intent: a TERMINATED pod by that name is not adopted",
     [{"pod_id": None, "pod_status": None, "intent": INTENT_NAME,
       "named": (make_pod(INTENT_POD, INTENT_NAME, PodStatus.TERMINATED),)}], ["forget_intent", "create"]),
    ("intent: pods not listed this pass", [INTENT, {"listed": False}], []),
    # 7. orphans
    ("orphans", [ORPHANS], [f"terminate_orphan:{ORPHAN}"]),
    ("orphans: --report-orphans-only", [ORPHANS, {"options": Options(report_orphans_only=True)}],
     [f"report_orphan:{ORPHAN}"]),
    ("orphans: sweep_orphans off", [ORPHANS, {"limits": {"sweep_orphans": False}}], []),
    ("orphans: a TERMINATED orphan is left alone",
     [{"named": (make_pod(ORPHAN, f"rpm-llm-{INSTALL}-5e5e5e", PodStatus.TERMINATED),)}], []),
    ("orphans: also swept without a lease", [ORPHANS, {"opened_at": None, "pod_id": None, "pod_status": None}],
     [f"terminate_orphan:{ORPHAN}"]),
    # 8. proxy
    ("proxy", [PROXY], ["restart_proxy"]),
    ("proxy: running", [PROXY, {"proxy_running": True}], []),
    ("proxy: not checked", [PROXY, {"proxy_running": None}], []),
    ("proxy: not wanted", [PROXY, {"proxy_wanted": False}], []),
    ("proxy: no lease", [PROXY, {"opened_at": None, "pod_id": None, "pod_status": None}], []),
    # no lease at all: nothing of this config may run
    ("no lease: running pod ended by the shutdown action", [{"opened_at": None}], [f"terminate:{MAIN}"]),
    ("no lease: the last lease ended with stop", [{"opened_at": None, "lease_end_action": "stop"}],
     [f"stop:{MAIN}"]),
    ("no lease: stopped pod kept after an idle stop",
     [{"opened_at": None, "lease_end_action": "stop", "pod_status": PodStatus.EXITED}], []),
    ("no lease: ERROR pod terminated even after a stop",
     [{"opened_at": None, "lease_end_action": "stop", "pod_status": PodStatus.ERROR}], [f"terminate:{MAIN}"]),
    ("no lease: shutdown --stop", [{"opened_at": None, "options": Options(shutdown_action="stop")}],
     [f"stop:{MAIN}"]),
    ("no lease: pod vanished", [{"opened_at": None, "pod_status": None}], []),
    # Many pods: the account cap (every pod's spend together) ends this pod too.
    ("account cap", [{"account_spend": 25.0}], ["close_lease:spend_cap", f"terminate:{MAIN}"]),
    ("account cap: just below", [{"account_spend": 19.99}], []),
    # An adopted pod (pod_id) is stopped, never terminated, and never created in its place.
    ("adopted: cutoff stops it", [CUTOFF, {"adopted": True}], ["close_lease:cutoff", f"stop:{MAIN}"]),
    ("adopted: spend cap stops it", [SPEND_CAP, {"adopted": True}], ["close_lease:spend_cap", f"stop:{MAIN}"]),
    ("adopted: vanished is an alarm, not a create", [RECOVERY, {"adopted": True}],
     ["close_lease:gone", f"alarm:{MAIN}"]),
    ("adopted: refused resume is an alarm, not a replacement",
     [{"adopted": True, "pod_status": PodStatus.EXITED, "resume_refused": True}], [f"alarm:{MAIN}"]),
    ("adopted: no lease, running: stopped not terminated", [{"adopted": True, "opened_at": None}],
     [f"stop:{MAIN}"]),
    # RunPod did not answer: a pod not known to be ended the way its lease ended is ended by id, so that a
    # failure is reported instead of a silent "nothing running".
    ("no lease: pod not observed", [{"opened_at": None, "pod_observed": False}], [f"terminate:{MAIN}"]),
    ("no lease: pod not observed, last seen running, lease ended by stop",
     [{"opened_at": None, "pod_observed": False, "lease_end_action": "stop", "last_status": "RUNNING"}],
     [f"stop:{MAIN}"]),
    ("no lease: pod not observed, already stopped as its lease ended",
     [{"opened_at": None, "pod_observed": False, "lease_end_action": "stop", "last_status": "EXITED"}], []),
]


@pytest.mark.parametrize(("triggers", "expected"), [row[1:] for row in SINGLE_ROWS],
                         ids=[row[0] for row in SINGLE_ROWS])
def test_single_rule(triggers: list[dict[str, Any]], expected: list[str]) -> None:
    assert run(*triggers) == expected


# -------------------------------------------------------------------------------------- rule pairs
# Keyed by (higher, lower) in priority order. The winner's limit labels the one CLOSE_LEASE; rules that
# do not conflict (orphans, a second pod-less action) still do their part.

END_MAIN = f"terminate:{MAIN}"
ADOPT_AND_END = [f"adopt:{INTENT_POD}", f"terminate:{INTENT_POD}"]
ORPHAN_GONE = f"terminate_orphan:{ORPHAN}"

PAIRS: dict[tuple[str, str], list[str]] = {
    ("spend_cap", "cutoff"): ["close_lease:spend_cap", END_MAIN],
    ("spend_cap", "runtime"): ["close_lease:spend_cap", END_MAIN],
    # the spend cap terminates although idle_action would only stop
    ("spend_cap", "idle"): ["close_lease:spend_cap", END_MAIN],
    ("spend_cap", "recovery"): ["close_lease:spend_cap"],
    ("spend_cap", "intent"): ["close_lease:spend_cap", *ADOPT_AND_END],
    ("spend_cap", "orphans"): ["close_lease:spend_cap", END_MAIN, ORPHAN_GONE],
    ("spend_cap", "proxy"): ["close_lease:spend_cap", END_MAIN],
    ("cutoff", "runtime"): ["close_lease:cutoff", END_MAIN],
    ("cutoff", "idle"): ["close_lease:cutoff", END_MAIN],
    ("cutoff", "recovery"): ["close_lease:cutoff"],
    ("cutoff", "intent"): ["close_lease:cutoff", *ADOPT_AND_END],
    ("cutoff", "orphans"): ["close_lease:cutoff", END_MAIN, ORPHAN_GONE],
    ("cutoff", "proxy"): ["close_lease:cutoff", END_MAIN],
    ("runtime", "idle"): ["close_lease:runtime", END_MAIN],
    ("runtime", "recovery"): ["close_lease:runtime"],
    ("runtime", "intent"): ["close_lease:runtime", *ADOPT_AND_END],
    ("runtime", "orphans"): ["close_lease:runtime", END_MAIN, ORPHAN_GONE],
    ("runtime", "proxy"): ["close_lease:runtime", END_MAIN],
    # a lease nobody used for idle_timeout_seconds is not given a new pod
    ("idle", "recovery"): ["close_lease:idle"],
    ("idle", "intent"): ["close_lease:idle", *ADOPT_AND_END],
    ("idle", "orphans"): ["close_lease:idle", f"stop:{MAIN}", ORPHAN_GONE],
    ("idle", "proxy"): ["close_lease:idle", f"stop:{MAIN}"],
    # the interrupted create's pod is the replacement: no second pod
    ("recovery", "intent"): [f"forget_pod:{MAIN}", f"adopt:{INTENT_POD}"],
    ("recovery", "orphans"): [f"forget_pod:{MAIN}", "create", ORPHAN_GONE],
    ("recovery", "proxy"): [f"forget_pod:{MAIN}", "create", "restart_proxy"],
    ("intent", "orphans"): [f"adopt:{INTENT_POD}", ORPHAN_GONE],
    ("intent", "proxy"): [f"adopt:{INTENT_POD}", "restart_proxy"],
    ("orphans", "proxy"): [ORPHAN_GONE, "restart_proxy"],
}
LIMITS = ("spend_cap", "cutoff", "runtime", "idle")


def test_every_pair_of_rules_has_a_row() -> None:
    assert set(PAIRS) == set(itertools.combinations(RULES, 2))


def _pair_triggers(higher: str, lower: str) -> list[dict[str, Any]]:
    # Recovery is about the record's pod: applied after the intent so the record keeps a (vanished) pod.
    if (higher, lower) == ("recovery", "intent"):
        return [INTENT, {"pod_id": MAIN, "pod_status": None}]
    return [RULES[higher], RULES[lower]]


@pytest.mark.parametrize(("higher", "lower"), list(PAIRS), ids=[f"{h}+{lo}" for h, lo in PAIRS])
def test_higher_priority_rule_wins(higher: str, lower: str) -> None:
    result = run(*_pair_triggers(higher, lower))
    assert result == PAIRS[(higher, lower)]
    if higher in LIMITS:
        assert result[0] == f"close_lease:{higher}"
        assert not {"create", "restart_proxy"} & set(result)
        assert not any(item.startswith(("resume", "replace")) for item in result)


EXTRA_PAIR_ROWS = [
    ("spend_cap+recovery(EXITED): terminated, not resumed", [SPEND_CAP, {"pod_status": PodStatus.EXITED}],
     ["close_lease:spend_cap", END_MAIN]),
    ("spend_cap+recovery(resume refused): no replacement",
     [SPEND_CAP, {"pod_status": PodStatus.EXITED, "resume_refused": True}], ["close_lease:spend_cap", END_MAIN]),
    ("cutoff+recovery(ERROR): no replacement", [CUTOFF, {"pod_status": PodStatus.ERROR}],
     ["close_lease:cutoff", END_MAIN]),
    ("idle+recovery(EXITED): not resumed", [IDLE, {"pod_status": PodStatus.EXITED}], ["close_lease:idle"]),
    ("idle+recovery(EXITED), idle_action terminate",
     [IDLE, {"pod_status": PodStatus.EXITED, "limits": {"idle_action": "terminate"}}],
     ["close_lease:idle", END_MAIN]),
    ("idle+recovery(ERROR): terminated, not replaced", [IDLE, {"pod_status": PodStatus.ERROR}],
     ["close_lease:idle", END_MAIN]),
    ("idle+recovery(resume refused): no replacement",
     [IDLE, {"pod_status": PodStatus.EXITED, "resume_refused": True}], ["close_lease:idle"]),
    ("runtime+recovery(replacement ready): both pods end",
     [RUNTIME, {"replacing": PodStatus.EXITED, "pod_ready": True}],
     ["close_lease:runtime", END_MAIN, f"terminate:{OLD}"]),
    ("cutoff+intent(no such pod): forgotten, not created again",
     [CUTOFF, {"pod_id": None, "pod_status": None, "intent": INTENT_NAME}], ["close_lease:cutoff", "forget_intent"]),
    ("recovery+intent(no such pod): exactly one create",
     [{"pod_status": None, "intent": INTENT_NAME}], [f"forget_pod:{MAIN}", "create", "forget_intent"]),
    ("recovery(ERROR)+intent: the found pod replaces it",
     [INTENT, {"pod_id": MAIN, "pod_status": PodStatus.ERROR}],
     [END_MAIN, f"forget_pod:{MAIN}", f"adopt:{INTENT_POD}"]),
    ("recovery(EXITED)+intent(no such pod): resumed, no second pod",
     [{"pod_status": PodStatus.EXITED, "intent": INTENT_NAME}], [f"resume:{MAIN}", "forget_intent"]),
    ("recovery(resume refused)+intent: the found pod is the replacement",
     [INTENT, {"pod_id": MAIN, "pod_status": PodStatus.EXITED, "resume_refused": True}], [f"adopt:{INTENT_POD}"]),
    ("recovery(pod not observed)+intent(no such pod): nothing created",
     [{"pod_status": None, "pod_observed": False, "intent": INTENT_NAME}], ["forget_intent"]),
    ("intent+orphans, report only: the intent's pod is not an orphan",
     [INTENT, ORPHANS, {"options": Options(report_orphans_only=True)}],
     [f"adopt:{INTENT_POD}", f"report_orphan:{ORPHAN}"]),
    ("no lease+intent(no such pod): nothing created",
     [{"opened_at": None, "pod_id": None, "pod_status": None, "intent": INTENT_NAME}], ["forget_intent"]),
]


@pytest.mark.parametrize(("triggers", "expected"), [row[1:] for row in EXTRA_PAIR_ROWS],
                         ids=[row[0] for row in EXTRA_PAIR_ROWS])
def test_rule_pair_variant(triggers: list[dict[str, Any]], expected: list[str]) -> None:
    assert run(*triggers) == expected


# ----------------------------------------------------------------------------------------- reasons


@pytest.mark.parametrize(
    ("triggers", "kind", "words"),
    [
        ([SPEND_CAP], ActionKind.CLOSE_LEASE, ["spend cap", "$25.00", "$20.00"]),
        ([CUTOFF], ActionKind.CLOSE_LEASE, ["daily cutoff 00:00"]),
        ([RUNTIME], ActionKind.TERMINATE, ["runtime limit 600 s"]),
        ([IDLE], ActionKind.STOP, ["idle for 1200 s", "900"]),
        ([{"pod_status": PodStatus.EXITED, "resume_refused": True}], ActionKind.REPLACE, ["resume refused"]),
        ([INTENT], ActionKind.ADOPT, [INTENT_POD]),
        ([{"pod_id": None, "pod_status": None, "intent": INTENT_NAME}], ActionKind.FORGET_INTENT, [INTENT_NAME]),
        ([ORPHANS], ActionKind.TERMINATE_ORPHAN, ["orphan"]),
    ],
    ids=["spend_cap", "cutoff", "runtime", "idle", "resume_refused", "adopt", "forget_intent", "orphan"],
)
def test_reasons_say_which_limit_and_by_how_much(triggers: list[dict[str, Any]], kind: ActionKind,
                                                 words: list[str]) -> None:
    scenario = Scenario()
    for trigger in triggers:
        scenario = scenario.merged(trigger)
    action = next(a for a in scenario.plan().actions if a.kind is kind)
    for word in words:
        assert word in action.reason


def test_orphan_actions_name_the_pod() -> None:
    action = Scenario().merged(ORPHANS).plan().actions[0]
    assert (action.pod_id, action.pod_name) == (ORPHAN, f"rpm-llm-{INSTALL}-5e5e5e")


def test_a_config_name_with_dashes_does_not_claim_the_pods_of_a_shorter_name() -> None:
    """Config "llm-big" must not see "rpm-llm-…" pods as its orphans, nor "llm" those of "llm-big"."""
    big = Scenario(named=(make_pod(ORPHAN, f"rpm-llm-big-{INSTALL}-5e5e5e"),))
    config, record, observation, activity = big.inputs()
    config_big = replace(config, pod=replace(config.pod, name="llm-big"))
    result = plan(NOW, config_big, replace(record, pod_id=None), replace(observation, pod=None), activity)
    # From "llm-big"'s side, its own pods are orphans ("pod-other-config" is rpm-llm-big-<id>-1b1b1b) and
    # "llm"'s pods are not.
    assert summary(result) == ["create", f"terminate_orphan:{ORPHAN}", "terminate_orphan:pod-other-config"]
    assert summary(big.plan()) == []  # from "llm"'s side, rpm-llm-big-… is not an orphan


@pytest.mark.parametrize(("started_ago", "expected"), [
    (None, "lease opened by wake; resuming the stopped pod"),  # never ran
    (timedelta(hours=2), "lease opened by wake; resuming the stopped pod"),  # ran in an earlier lease
    (timedelta(minutes=5), "pod stopped on its own"),  # ran in this lease, then stopped: an interruption
])
def test_resume_reason_tells_a_wake_from_an_interruption(started_ago: timedelta | None, expected: str) -> None:
    config, record, observation, activity = Scenario(pod_status=PodStatus.EXITED).inputs()
    assert record.lease is not None and observation.pod is not None
    record = replace(record, lease=replace(record.lease, opened_by="wake"))
    started = None if started_ago is None else NOW - started_ago
    observation = replace(observation, pod=replace(observation.pod, started_at=started))
    result = plan(NOW, config, record, observation, activity, Options())
    [resume] = [a for a in result.actions if a.kind == ActionKind.RESUME]
    assert resume.reason.startswith(expected)


def test_a_new_pod_name_carries_the_install_id_and_reads_back_as_this_installs() -> None:
    config = Scenario().config()
    name = podspec.new_pod_name(config, INSTALL)
    assert re.fullmatch(rf"rpm-llm-{INSTALL}-[0-9a-f]{{6}}", name)
    assert podspec.is_own_pod(name, config, INSTALL) and podspec.made_by(name, INSTALL)
    assert podspec.install_of(name) == INSTALL
    assert not podspec.is_own_pod(name, config, "zzzzzzzz") and not podspec.is_own_pod(name, config, "")
    spec = podspec.build_spec(config, name, "NVIDIA L40S", "upstream-key", None)
    assert spec.env[podspec.INSTALL_ID_ENV] == INSTALL
    # An older rpm's name (no install id) and names that only look alike are nobody's proof.
    for other in ("rpm-llm-3f2a1c", "rpm-llm-big-3f2a1c", f"rpm-llm-{INSTALL}-3F2A1C", f"llm-{INSTALL}-3f2a1c",
                  f"rpm-{INSTALL}-3f2a1c", f"rpm-llm-{INSTALL}-3f2a1c-x"):
        assert not podspec.made_by(other, INSTALL) and not podspec.is_own_pod(other, config, INSTALL), other
