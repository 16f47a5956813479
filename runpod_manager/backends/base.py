"""The protocol every backend implements: what the control plane and the proxy ask of "how an entry runs".

A backend is one config entry (a pod entry, or one of its replicas) run one way on RunPod (`backends.NAMES`;
`kind` is the protocol it speaks, never the backend). It is driven in passes, as the lifecycle is:

- **observe from one listing**: a pass over many entries makes one list call per backend (`listing`, asked of
  the first member of the backend's group when any member `wants_listing`: `GET /v2/pods` for every pod
  entry; serverless will make one `GET /v2/serverless`), and each member reads its own entry out of it
  (`observe`, `run_pass`);
- **the actions it can apply** (`actions`, `apply`): the planner's `ActionKind`s it knows how to carry out;
  `run_pass` is observe → `policy.plan` → apply, under the caller's lock, saving ahead of each call that
  changes something at RunPod;
- **readiness**: `ready` (verified and recorded in state, no call) and `confirm_ready` (ask the instance now,
  record the answer);
- **spend today**: from the entry's ledger in state (`spend.py`), no call;
- **the upstream targets** it gives the proxy (`upstreams`): where a ready entry's requests go.

The conformance suite `tests/contract/test_backends.py` runs every registered backend against its in-memory
fake; a backend is added by implementing this protocol, registering a factory (`registry.py`) and passing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from runpod_manager.config import Config
from runpod_manager.outcomes import AppliedAction, PassOutcome
from runpod_manager.policy import Action, ActionKind, Observation, Options
from runpod_manager.state import PodRecord, State

ListingT = TypeVar("ListingT")


@dataclass(frozen=True)
class UpstreamTarget:
    """Where the proxy sends a ready entry's requests: the instance's base URL (no trailing slash) and the key
    its server was started with. `instance_id` is what RunPod calls it (a pod id; an endpoint id next)."""

    instance_id: str
    base_url: str
    key: str | None = field(default=None, repr=False)


class Backend(Protocol[ListingT]):
    """One entry run one way on RunPod. `ListingT`: what the backend's one list call returns (pods:
    `ports.Listing`)."""

    @property
    def backend(self) -> str:
        """The registry's name for this backend (`backends.POD`, ...)."""

    @property
    def name(self) -> str:
        """The entry's name: its config name (a replica's `<name>-r<k>`) and its state record's key."""

    @property
    def config(self) -> Config:
        """The entry's view of the config file."""

    @property
    def actions(self) -> frozenset[ActionKind]:
        """The planner's actions this backend applies; the planner plans no other for its entries."""

    def wants_listing(self, state: State, *, sweep: bool) -> bool:
        """Whether this pass must look at RunPod for the entry: it holds something (an instance, a pending
        create, a lease), adopts an instance, or is due (or asked for: `sweep`) a sweep for orphans."""

    def listing(self, *, wanted: bool) -> ListingT:
        """The pass's one look at RunPod for every member of this backend's group (asked of the first; the
        caller passes whether any member `wants_listing`): one list call, or, not wanted, an empty listing
        that says nothing was asked. A failed call is carried in the listing, never raised."""

    def observe(self, state: State, listing: ListingT) -> Observation:
        """The entry as `listing` shows it, for the planner (no call that changes anything)."""

    def run_pass(self, state: State, options: Options, *, dry_run: bool, sweep: bool = False,
                 activity_at: datetime | None = None, check_ready: bool = False,
                 listing: ListingT | None = None) -> PassOutcome:
        """Observe (from `listing` when given), plan, apply: one pass under the caller's lock."""

    def apply(self, state: State, action: Action) -> AppliedAction:
        """Carry out one planned action (one of `actions`), the state saved first when it calls RunPod."""

    def ready(self, record: PodRecord) -> bool:
        """The entry was verified ready and still is, as state records it (no call)."""

    def confirm_ready(self, state: State, listing: ListingT) -> bool:
        """Ask the instance `listing` shows whether it answers now; record the answer in state."""

    def spend_today(self, state: State, now: datetime) -> float:
        """What the entry spent on the local day of `now`, from its ledger in state (no call)."""

    def upstreams(self, record: PodRecord) -> tuple[UpstreamTarget, ...]:
        """Where the proxy may send the entry's requests now: empty unless a lease is open and it is ready."""
