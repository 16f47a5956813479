"""The pod backend: today's pod lifecycle (`lifecycle.Lifecycle` over `ports.RunPodPort`) behind the
backend protocol (`base.Backend`). An adapter, not a second lifecycle: every pass, action and probe is the
Lifecycle's own; this module adds only the pass's one listing for many pods and the protocol's reads."""

from __future__ import annotations

from datetime import datetime

from runpod_manager import backends, policy, spend
from runpod_manager.config import Config
from runpod_manager.errors import ApiError
from runpod_manager.lifecycle import Lifecycle
from runpod_manager.outcomes import AppliedAction, PassOutcome
from runpod_manager.policy import Action, ActionKind, Observation, Options
from runpod_manager.ports import Listing
from runpod_manager.runpod.models import PodStatus
from runpod_manager.state import PodRecord, State

from .base import UpstreamTarget


class PodBackend:
    """A pod entry (or replica) run as a RunPod GPU pod, through its Lifecycle."""

    backend = backends.POD
    actions = frozenset(ActionKind)  # the planner's actions were written for pods: it applies them all

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    @property
    def name(self) -> str:
        return self.lifecycle.name

    @property
    def config(self) -> Config:
        return self.lifecycle.config

    def wants_listing(self, state: State, *, sweep: bool) -> bool:
        lc, record = self.lifecycle, state.record(self.name)
        return sweep or record.holds_something or bool(lc.config.pod.pod_id) or lc.sweep_due(record, lc.clock())

    def listing(self, *, wanted: bool) -> Listing:
        """Every pod of the account (one `GET /v2/pods`), or nothing asked when no member wanted it."""
        if not wanted:
            return Listing(complete=False)
        lc = self.lifecycle
        try:
            return Listing(pods=tuple(lc.client.list_pods()))
        except ApiError as exc:
            lc.events.write("list_failed", config=lc.name, error=exc.message)
            return Listing(error=exc)

    def observe(self, state: State, listing: Listing) -> Observation:
        return self.lifecycle.observe(state, listing)

    def run_pass(self, state: State, options: Options, *, dry_run: bool, sweep: bool = False,
                 activity_at: datetime | None = None, check_ready: bool = False,
                 listing: Listing | None = None) -> PassOutcome:
        return self.lifecycle.run_pass(state, options, dry_run=dry_run, sweep=sweep, activity_at=activity_at,
                                       check_ready=check_ready, listing=listing)

    def apply(self, state: State, action: Action) -> AppliedAction:
        return self.lifecycle.apply(state, action)

    def ready(self, record: PodRecord) -> bool:
        return record.ready

    def confirm_ready(self, state: State, listing: Listing) -> bool:
        """RunPod says RUNNING and the kind's probe answers through the pod URL (`ports.probe_pod`)."""
        observation = self.lifecycle.observe(state, listing, check_ready=True)
        record, pod = state.record(self.name), observation.pod
        if pod is not None and pod.id == record.pod_id:
            record.ready_pod_id = pod.id if observation.pod_ready and pod.status == PodStatus.RUNNING else None
        return record.ready

    def spend_today(self, state: State, now: datetime) -> float:
        return spend.today_usd(state.record(self.name), policy.local_day(now, self.config.zone))

    def upstreams(self, record: PodRecord) -> tuple[UpstreamTarget, ...]:
        if record.lease is None or not record.ready or record.pod_id is None:
            return ()
        return (UpstreamTarget(record.pod_id, self.lifecycle.pod_url(record.pod_id), record.upstream_key),)


def pod_backend(lead: Lifecycle, config: Config | None = None) -> PodBackend:
    """The registry's factory: `lead` itself (config None: the lead's own entry), else a sibling for `config`
    sharing the lead's state store, RunPod client, clocks and proxy port."""
    return PodBackend(lead if config is None else lead.sibling(config, share_client=True))
