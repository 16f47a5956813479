"""`rpm status`: what rpm knows and RunPod says about a config's pod, with the derived facts the planner uses.

Read-only: no lock, no save. Every derived fact comes from its one function: idle since from
`policy.last_active_at`, the limits from `policy.limit_view`, spend today from `spend.today_usd` (after
accruing this observation on a copy of the record), ready from `PodRecord.ready`, the proxy URL from
`lifecycle.proxy_base_url`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runpod_manager import podspec, policy, spend
from runpod_manager.errors import ApiError, ConfigError, NotFound
from runpod_manager.outcomes import FleetStatus, StatusResult
from runpod_manager.ports import answers_without_key
from runpod_manager.runpod.models import Pod
from runpod_manager.state import PodRecord, State

if TYPE_CHECKING:
    from runpod_manager.control import Fleet
    from runpod_manager.lifecycle import Lifecycle


def build_status(lifecycle: Lifecycle, *, list_others: bool = True) -> StatusResult:
    """One pod's status; `list_others`: also list the account's rpm pods of other installs (one call)."""
    from runpod_manager.control import enforcer, last_watchdog_pass, proxy_base_url

    config = lifecycle.config
    state = lifecycle.store.load()
    record = state.pods.get(lifecycle.name) or PodRecord(config_name=lifecycle.name)
    lifecycle.check_world(copy.deepcopy(record))  # the same refusal as every command
    now = lifecycle.clock()
    pod: Pod | None = None
    observed, error = True, None
    if record.pod_id:
        try:
            pod = lifecycle.client.get_pod(record.pod_id)
        except NotFound:
            pod = None
        except ApiError as exc:
            observed, error = False, exc.message
    # The planner's own accrual, on a copy: status shows what the next pass would enforce, and saves nothing.
    spend_today = lifecycle.spend_today(copy.deepcopy(record), pod, now)
    activity = policy.activity_of(record)
    idle = None
    if record.lease is not None:
        idle = (now - policy.last_active_at(now, record.lease, activity)).total_seconds()
    proxy_pid = lifecycle.proxy.running_pid()
    ready = record.ready and (pod is None or pod.status_text == "RUNNING")
    routes: list[str] = []
    public_url_open = None
    if config.pod.is_http:
        base = proxy_base_url(config).removesuffix("/v1")
        routes = [f"{base}/pods/{config.pod.name}/"]
        routes += [f"{base}/pods/{config.pod.name}:{port}/" for port in config.pod.extra_ports]
        if config.pod.listen_port:
            routes.append(f"{base.rsplit(':', 1)[0]}:{config.pod.listen_port}/")
        if ready and pod is not None and record.pod_id:
            public_url_open = any(answers_without_key(lifecycle.config.pod_url(record.pod_id, port))
                                  for port in config.pod.ports)
    limits = policy.limit_view(now, config, record, activity)
    unenforced = None
    if record.lease is not None and pod is not None and pod.status in policy.ACTIVE_STATUSES:
        past = [name for name, at in (("its idle time", limits.idle_ends_at), ("its deadline", limits.deadline))
                if at is not None and now >= at]
        if past and enforcer(lifecycle) is None:
            unenforced = (f"past {' and '.join(past)} and nothing enforces it: no proxy runs and `rpm watchdog` "
                          "has not run lately; `rpm watchdog` or `rpm shutdown` ends it")
    return StatusResult(
        config_name=lifecycle.name, record=record, pod=pod, pod_observed=observed, observe_error=error,
        spend_today_usd=spend_today, limits=limits, now=now,
        proxy_pid=proxy_pid, proxy_url=proxy_base_url(config) if proxy_pid else None,
        pod_url=lifecycle.pod_url(record.pod_id) if record.pod_id else None,
        max_daily_spend_usd=config.limits.max_daily_spend_usd, idle_seconds=idle,
        ready=ready, notices=lifecycle.store.take_notices(), kind=config.pod.kind, routes=routes,
        public_url_open=public_url_open, other_installs=other_install_pods(lifecycle, state) if list_others else [],
        unenforced=unenforced, watchdog_last_pass_at=last_watchdog_pass(lifecycle.paths),
    )


def other_install_pods(lifecycle: Lifecycle, state: State) -> list[Pod]:
    """The account's rpm pods that this install cannot claim (another install's, or an older rpm's), so that
    a pod billing on the account is never a mystery. One list call; nothing when RunPod does not answer."""
    from runpod_manager.lifecycle import other_installs

    try:
        return other_installs(state, lifecycle.client.list_pods_with_prefix(podspec.RPM_PREFIX))
    except (ApiError, ConfigError):  # ConfigError: no key (status of a config that holds no pod works without)
        return []


def build_fleet_status(fleet: Fleet, members: Sequence[Lifecycle]) -> FleetStatus:
    """`rpm status` of several pods: each pod's status (one RunPod GET each), the account's spend today
    against the account cap, and the records of pods that are no longer in the config."""
    pods = [build_status(member, list_others=False) for member in members]
    lead = fleet.lead
    state = lead.store.load()
    today = policy.local_day(lead.clock(), lead.config.zone)
    shown = {member.name for member in members}
    # The pods shown, with this observation accrued (as the next pass will); the rest from their ledgers.
    account = sum(result.spend_today_usd for result in pods) + spend.account_today_usd(
        (record for name, record in state.pods.items() if name not in shown), today)
    unconfigured = [name for name, record in state.pods.items()
                    if name not in fleet.members and (record.pod_id or record.lease)]
    return FleetStatus(pods=pods, account_spend_today_usd=account,
                       account_max_daily_spend_usd=lead.config.account.max_daily_spend_usd,
                       unconfigured=unconfigured, other_installs=other_install_pods(lead, state))
