"""The create of a pod, made safe against crashes: the intent is on disk before RunPod is asked.

The intent (the pod name about to be created) is saved before `POST /v2/pods`; a crash between the call and
the save of the pod id is recovered by a later pass that finds the pod by that name (policy: ADOPT, or
FORGET_INTENT when there is none). GPU types are tried in order within the max price; a definite refusal
(balance, an invalid request, the key) clears the intent at once: no pod was made.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from runpod_manager import catalog, podspec, spend
from runpod_manager.errors import AuthError, InsufficientBalance, InvalidRequest, NoCapacity
from runpod_manager.state import Intent, PodRecord, State

if TYPE_CHECKING:
    from runpod_manager.config import Config
    from runpod_manager.events import EventLog
    from runpod_manager.paths import Paths
    from runpod_manager.ports import RunPodPort
    from runpod_manager.state import StateStore


class Executor(Protocol):
    """What a create uses of the executor that applies it (`lifecycle.Lifecycle`), described here so that this
    module, which the lifecycle calls, does not import it back."""

    @property
    def config(self) -> Config: ...
    @property
    def paths(self) -> Paths: ...
    @property
    def client(self) -> RunPodPort: ...
    @property
    def store(self) -> StateStore: ...
    @property
    def events(self) -> EventLog: ...
    @property
    def name(self) -> str: ...


def create(lc: Executor, state: State, record: PodRecord, now: datetime, *, replacing: str | None) -> None:
    """Create the pod, trying GPU types in order within the max price.

    The intent (the name about to be created) is saved before the call; a crash between the call and the
    save is recovered by finding the pod by name.
    """
    candidates = podspec.gpu_candidates(lc.config, catalog.prices_for_max_price(lc.client, lc.paths,
                                                                                    lc.config))
    if not candidates:
        raise NoCapacity("no configured GPU type is within [pod] max_price_per_hour",
                         hint="run `rpm refresh-catalog` to see prices")
    pod_name = podspec.new_pod_name(lc.config, state.install_id)
    if replacing is not None or not record.upstream_key:
        record.upstream_key = secrets.token_urlsafe(32)
    record.intent = Intent(pod_name=pod_name, created_at=now, purpose="replace" if replacing else "create")
    lc.store.save(state)
    refused: list[str] = []
    for gpu_type_id in candidates:
        spec = podspec.build_spec(lc.config, pod_name, gpu_type_id, record.upstream_key, record.lease)
        try:
            pod = lc.client.create_pod(spec)
        except NoCapacity:
            refused.append(f"{gpu_type_id}: no capacity")
            continue  # another attempt on the same type rarely helps right away: next type
        except (InsufficientBalance, InvalidRequest, AuthError):
            record.intent = None  # a definite refusal: no pod was made
            raise
        record.pod_id, record.pod_name, record.intent, record.ready_pod_id = pod.id, pod.name, None, None
        record.gpu_type_id, record.data_center_id = pod.gpu_type_id, pod.data_center_id
        record.cost_per_hour, record.last_status = pod.cost_per_hour, pod.status.value
        if replacing is not None:
            record.replacing_pod_id = replacing
        spend.pod_created(record, now)
        lc.events.write("created", config=lc.name, pod_id=pod.id, pod_name=pod.name, gpu=gpu_type_id,
                          cost_per_hour=pod.cost_per_hour)
        return
    record.intent = None
    raise NoCapacity(f"no capacity for any configured GPU type ({'; '.join(refused)})",
                     hint="add GPU types to [pod] gpu_types, widen data_centers, or try later")
