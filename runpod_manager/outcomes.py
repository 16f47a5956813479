"""What the control plane's operations return: typed outcomes the commands render and take exit codes from.

Failures travel as `RpmError` instances (their class decides the exit code), never as text to be matched.
Each result says its own exit code, so `cli.py` maps it in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from runpod_manager import policy
from runpod_manager.errors import ApiError, AuthError, ExitCode, RpmError
from runpod_manager.policy import Action, ActionKind, Plan
from runpod_manager.runpod.models import Pod
from runpod_manager.state import PodRecord


@dataclass(frozen=True)
class Progress:
    """One line of the readiness wait, for the renderer's progress display."""

    pod_id: str | None
    status: str
    elapsed_seconds: float
    attempt: int
    detail: str = ""

    @classmethod
    def of_pod(cls, pod: Pod, elapsed_seconds: float, attempt: int, *, ready: bool) -> Progress:
        running = pod.status.value == "RUNNING"
        detail = "model server answering" if ready else "waiting for the model server" if running else ""
        return cls(pod.id, pod.status.value, elapsed_seconds, attempt, detail)


@dataclass
class AppliedAction:
    action: Action
    ok: bool = True
    error: RpmError | None = None  # the typed failure: callers decide by its class, never by its text


@dataclass
class PassOutcome:
    """The outcome of one observe → plan → apply pass over a config's pod."""

    plan: Plan = field(default_factory=Plan)
    applied: list[AppliedAction] = field(default_factory=list)
    dry_run: bool = False
    busy: bool = False  # another rpm held the lock: nothing was observed or done
    record: PodRecord | None = None
    pod: Pod | None = None
    spend_today_usd: float = 0.0
    api_calls: int = 0
    notices: list[str] = field(default_factory=list)
    observe_errors: list[ApiError] = field(default_factory=list)  # what the pass could not see
    # Listed pods named like this pod's that are another rpm install's (or an older rpm's): left alone.
    other_installs: list[Pod] = field(default_factory=list)

    def _done(self, *kinds: ActionKind) -> bool:
        return any(a.ok and a.action.kind in kinds for a in self.applied)

    @property
    def created(self) -> bool:
        return self._done(ActionKind.CREATE, ActionKind.REPLACE)

    @property
    def resumed(self) -> bool:
        return self._done(ActionKind.RESUME)

    @property
    def replaced(self) -> bool:
        return self._done(ActionKind.REPLACE)

    @property
    def failures(self) -> list[AppliedAction]:
        return [a for a in self.applied if not a.ok]

    @property
    def auth_error(self) -> AuthError | None:
        """The key stopped working (revoked, wrong, lacking permission): an alarm on every pass."""
        errors: list[RpmError] = [*self.observe_errors, *(a.error for a in self.applied if a.error)]
        return next((e for e in errors if isinstance(e, AuthError)), None)

    @property
    def enforcement_failed(self) -> bool:
        """A limit (an end of a pod, or an alarm) could not be enforced: cron should mail this."""
        return any(
            not a.ok and a.action.kind in (*policy.ENDS, ActionKind.TERMINATE_ORPHAN) for a in self.applied
        ) or any(a.action.kind == ActionKind.ALARM for a in self.applied)

    @property
    def exit_code(self) -> ExitCode:
        return _pass_exit_code(self.auth_error, self.enforcement_failed)


@dataclass
class FleetOutcome:
    """One pass over every pod of a config: each pod's outcome, and what it means for cron."""

    outcomes: dict[str, PassOutcome] = field(default_factory=dict)
    busy: bool = False
    dry_run: bool = False
    api_calls: int = 0
    notices: list[str] = field(default_factory=list)

    @property
    def auth_error(self) -> AuthError | None:
        return next((o.auth_error for o in self.outcomes.values() if o.auth_error is not None), None)

    @property
    def enforcement_failed(self) -> bool:
        return any(o.enforcement_failed for o in self.outcomes.values())

    @property
    def exit_code(self) -> ExitCode:
        """3 when the key no longer works, 1 when any pod's limit could not be enforced, else 0."""
        return _pass_exit_code(self.auth_error, self.enforcement_failed)

    @property
    def spend_today_usd(self) -> float:
        """Today's spend of every pod of the config (what the account cap is held against)."""
        return sum(o.spend_today_usd for o in self.outcomes.values())


@dataclass
class StartResult:
    pod: Pod | None
    record: PodRecord
    created: bool
    resumed: bool
    already_running: bool
    ready: bool
    base_url: str | None
    pod_url: str | None
    plan: Plan
    dry_run: bool = False
    wait_seconds: float = 0.0
    proxy_url: str | None = None
    notices: list[str] = field(default_factory=list)


@dataclass
class ManyStarts:
    """`rpm start` of several pods: each pod's result, or its error (its class gives the exit code)."""

    results: dict[str, StartResult] = field(default_factory=dict)
    errors: dict[str, RpmError] = field(default_factory=dict)
    proxy_url: str | None = None

    @property
    def exit_code(self) -> ExitCode:
        return next((error.exit_code for error in self.errors.values()), ExitCode.OK)


@dataclass
class ShutdownResult:
    ended: list[AppliedAction]  # the record's pods stopped or terminated, and orphans of this config
    orphans_terminated: list[str]
    proxies_stopped: list[int]  # pids of every proxy of this config that was stopped
    record: PodRecord
    dry_run: bool = False
    plan: Plan = field(default_factory=Plan)
    notices: list[str] = field(default_factory=list)
    other_installs: list[str] = field(default_factory=list)  # "id (name)" of rpm pods left alone: not this install's

    @property
    def proxy_stopped(self) -> bool:
        return bool(self.proxies_stopped)


@dataclass
class ProxyStopResult:
    """What a stopped proxy leaves behind: the pod it ended, or the pod that keeps running and until when."""

    pod_id: str | None
    ended: list[AppliedAction]
    failed: list[AppliedAction]
    kept_until: datetime | None  # the lease's deadline, when the pod keeps running
    idle_ends_at: datetime | None  # when the watchdog stops it for idleness, if idle stop is on
    stopped_by: str | None = None  # "SIGINT" | "SIGTERM" | None

    @property
    def exit_code(self) -> ExitCode:
        if self.failed:
            return ExitCode.FAILED
        return ExitCode.INTERRUPTED if self.stopped_by == "SIGINT" else ExitCode.OK


@dataclass
class StatusResult:
    config_name: str
    record: PodRecord
    pod: Pod | None
    pod_observed: bool
    observe_error: str | None
    spend_today_usd: float
    limits: policy.LimitView
    now: datetime
    proxy_pid: int | None
    proxy_url: str | None
    pod_url: str | None
    max_daily_spend_usd: float
    idle_seconds: float | None
    ready: bool = False
    notices: list[str] = field(default_factory=list)
    kind: str = "openai"
    routes: list[str] = field(default_factory=list)  # where the proxy serves an http pod (/pods/…, listen port)
    # kind = "http", pod running: its public RunPod URL answered a request that carried no key (anyone with
    # the URL reaches the service without rpm); None when not asked.
    public_url_open: bool | None = None
    other_installs: list[Pod] = field(default_factory=list)  # rpm pods of the account this install leaves alone
    # The pod runs past its idle time or deadline and nothing enforces them (no proxy runs, no recent
    # watchdog pass): what is past, as a sentence; None when nothing is (control.enforcer).
    unenforced: str | None = None
    watchdog_last_pass_at: datetime | None = None


@dataclass
class FleetStatus:
    """`rpm status` over several pods: each pod's status, and the account's spend against its cap."""

    pods: list[StatusResult]
    account_spend_today_usd: float
    account_max_daily_spend_usd: float
    unconfigured: list[str]  # pods in state that the config no longer has (ended by `rpm shutdown --all`)
    other_installs: list[Pod] = field(default_factory=list)  # rpm pods of the account this install leaves alone


def _pass_exit_code(auth_error: AuthError | None, enforcement_failed: bool) -> ExitCode:
    """What a pass (of one pod or of a fleet) means for cron: the key first, then the limits."""
    if auth_error is not None:
        return ExitCode.AUTH
    return ExitCode.FAILED if enforcement_failed else ExitCode.OK
