"""Pods: the record (`Pod`), its statuses and allowed actions, and `Pods`, the pod operations of the v2 API
and of the control endpoints: create (placed on stock, billed from the moment of rental), read, list, patch,
act (stop, start, restart, terminate), the platform's interruptions, logs, and the v2 Pod object.

Status advances lazily: each read computes where a pod's timeline has got to by now, with the exact
transition times (PROVISIONING → STARTING → RUNNING, then the model server loads; a pod whose image is not a
vLLM image runs the fake generic service instead, on the same timeline). Nothing here sleeps.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import string
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from runpod_manager.sandbox.billing import is_number, rfc3339
from runpod_manager.sandbox.errors import NO_CAPACITY_DETAIL, RESUME_REFUSED_DETAIL, WorldError
from runpod_manager.sandbox.gpus import DC_BY_ID, GPU_BY_ID, GPU_MODELS, place
from runpod_manager.sandbox.timeline import LogLine, Timeline

_ID_ALPHABET = string.ascii_lowercase + string.digits
SERVICE_RECENT_REQUESTS = 100


class PodStatus(StrEnum):
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    ERROR = "ERROR"
    TERMINATED = "TERMINATED"


# Which actions each status allows (the spec's table, published in the pod's `actions` field).
ALLOWED_ACTIONS: dict[PodStatus, tuple[str, ...]] = {
    PodStatus.PROVISIONING: ("stop", "terminate"),
    PodStatus.STARTING: ("stop", "terminate"),
    PodStatus.RUNNING: ("stop", "restart", "terminate"),
    PodStatus.EXITED: ("start", "terminate"),
    PodStatus.ERROR: ("start", "terminate"),
    PodStatus.TERMINATED: (),
}
# Statuses in which a pod holds its GPUs and is billed (RunPod bills from the moment of rental).
ACTIVE_STATUSES = frozenset({PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING})


@dataclass
class ModelStats:
    """Live counters of one pod's model server (not persisted: a restart starts a fresh server)."""

    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)


@dataclass
class ServiceStats:
    """Live counters of one pod's generic service (not persisted, like ModelStats), for tests to read."""

    requests: int = 0
    active: int = 0
    open_websockets: int = 0
    websocket_frames: int = 0
    received_bytes: int = 0
    # The latest requests as {method, path, query, port, status}: no header values (they may hold keys).
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=SERVICE_RECENT_REQUESTS))

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "active": self.active, "openWebsockets": self.open_websockets,
                "websocketFrames": self.websocket_frames, "receivedBytes": self.received_bytes,
                "recent": list(self.recent)}


def serves_vllm(image: str) -> bool:
    """Whether a pod of this image runs the fake vLLM (else the fake generic service): its name contains
    `vllm` (any case), or it is empty (a template's image, which the emulator cannot see)."""
    return not image or "vllm" in image.lower()


@dataclass
class Pod:
    id: str
    name: str
    image: str
    args: str
    env: dict[str, str]
    ports: list[str]
    disk_gb: int
    mounts: dict[str, Any]
    registry: str | None
    gpu_id: str
    gpu_count: int
    cloud: str
    data_center_id: str
    cuda_version: str
    locked: bool
    global_networking: bool
    created_at: float
    status: PodStatus
    phase_started_at: float
    pod_key: str
    started_at: float | None = None
    running_since: float | None = None
    model_ready_at: float | None = None
    model_loaded_logged: bool = False
    model_crashed: bool = False
    host_taken: bool = False
    container_generation: int = 0
    logs: list[LogLine] = field(default_factory=list)

    @property
    def actions(self) -> tuple[str, ...]:
        allowed = ALLOWED_ACTIONS[self.status]
        if self.locked:
            # RunPod: "Locked pods cannot be stopped or reset."
            allowed = tuple(a for a in allowed if a not in ("stop", "restart"))
        return allowed

    def http_ports(self) -> set[int]:
        result = set()
        for spec in self.ports:
            number, _, protocol = spec.partition("/")
            if protocol == "http" and number.isdigit():
                result.add(int(number))
        return result

    def container_command(self) -> list[str] | None:
        """The argv to run for `sh -c '...'` / `bash -c '...'` args; None for anything else."""
        words = _split_args(self.args)
        if len(words) >= 3 and words[0] in ("sh", "bash") and words[1] == "-c":
            return words[:3]
        return None

    def arg_value(self, *flags: str) -> str | None:
        """The value of a vLLM-style flag in the args (also inside a `sh -c` command), if any."""
        words = _split_args(self.args)
        command = self.container_command()
        if command:
            words = words + _split_args(command[2])
        for index, word in enumerate(words):
            for flag in flags:
                if word == flag and index + 1 < len(words):
                    return words[index + 1]
                if word.startswith(flag + "="):
                    return word[len(flag) + 1:]
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pod:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = PodStatus(values["status"])
        values["logs"] = [LogLine(**line) for line in values.get("logs", [])]
        return cls(**values)


def check_loaded_pod(pod: Pod) -> None:
    """A pod read from a state file has the types and ids every later computation relies on."""
    problem = None
    if not isinstance(pod.id, str) or not pod.id:
        problem = "an empty or non-string id"
    elif pod.gpu_id not in GPU_BY_ID or pod.data_center_id not in DC_BY_ID:
        problem = f"an unknown GPU type {pod.gpu_id!r} or data center {pod.data_center_id!r}"
    elif not all(is_number(n) for n in (pod.created_at, pod.phase_started_at)) or not all(
            n is None or is_number(n) for n in (pod.started_at, pod.running_since, pod.model_ready_at)):
        problem = "non-numeric timestamps"
    elif not isinstance(pod.gpu_count, int) or isinstance(pod.gpu_count, bool) or pod.gpu_count < 1:
        problem = "an invalid gpu_count"
    elif not (isinstance(pod.ports, list) and all(isinstance(p, str) for p in pod.ports)):
        problem = "ports that are not a list of strings"
    elif not (isinstance(pod.env, dict) and isinstance(pod.args, str) and isinstance(pod.pod_key, str)):
        problem = "env, args or pod_key of the wrong type"
    if problem is not None:
        raise ValueError(f"not a sandbox state file (pod {pod.id!r} has {problem})")


def _split_args(args: str) -> list[str]:
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class Pods:
    """Every pod, their model and service counters, and the operations on them, through the shared timeline."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.pods: dict[str, Pod] = {}
        self.model_stats: dict[str, ModelStats] = {}
        self.service_stats: dict[str, ServiceStats] = {}

    def reset(self) -> None:
        self.pods.clear()
        self.model_stats.clear()
        self.service_stats.clear()

    def to_list(self) -> list[dict[str, Any]]:
        return [pod.to_dict() for pod in self.pods.values()]

    @staticmethod
    def parse(data: Any) -> dict[str, Pod]:
        """Pods from a state file (KeyError, TypeError or ValueError when one is not a pod)."""
        return {pod.id: pod for pod in (Pod.from_dict(p) for p in data)}

    def snapshot_json(self, pod: Pod, now: float) -> dict[str, Any]:
        """A pod as /_sandbox/state shows it: the v2 object plus what the v2 API hides (key, host, model)."""
        model, _ = self.model_state(pod.id, min(pod.http_ports(), default=-1))
        stats = self.model_stats.get(pod.id, ModelStats())
        return {**self.pod_json(pod), "podKey": pod.pod_key, "hostTaken": pod.host_taken,
                "modelCrashed": pod.model_crashed, "model": model, "modelName": self.model_name(pod),
                "modelRunning": stats.running, "containerGeneration": pod.container_generation,
                "serves": "vllm" if serves_vllm(pod.image) else "service",
                "service": self.service_stats.get(pod.id, ServiceStats()).to_json(),
                "spendUsd": self.timeline.ledger.spend_usd(now, pod.id)}

    def _log(self, pod: Pod, source: str, line: str, at: float | None = None) -> None:
        self.timeline.log(pod.logs, source, line, at)

    # -- the timeline --

    def advance(self) -> None:
        """Bring every pod's timeline up to now (the background tick calls this)."""
        now = self.timeline.now()
        for pod in self.pods.values():
            self._advance(pod, now)

    def add_container_output(self, pod_id: str, lines: Iterable[str]) -> None:
        pod = self.pods.get(pod_id)
        if pod is not None:
            for line in lines:
                self._log(pod, "container", line)

    def _advance(self, pod: Pod, now: float) -> None:
        settings = self.timeline.settings
        while True:
            provisioned = pod.phase_started_at + settings.provision_seconds
            if pod.status == PodStatus.PROVISIONING and now >= provisioned:
                at = pod.phase_started_at + settings.provision_seconds
                pod.status, pod.phase_started_at = PodStatus.STARTING, at
                self._log(pod, "system", f"Image {pod.image} pulled; starting container", at)
            elif pod.status == PodStatus.STARTING and now >= pod.phase_started_at + settings.start_seconds:
                at = pod.phase_started_at + settings.start_seconds
                if self.timeline.faults.take("fail_boots"):
                    self._stop(pod, PodStatus.ERROR, "Pod failed at start: the host's GPU did not initialise")
                    pod.phase_started_at = at
                    break
                self._become_running(pod, at)
            else:
                break
        if (pod.status == PodStatus.RUNNING and not pod.model_loaded_logged and not pod.model_crashed
                and pod.model_ready_at is not None and now >= pod.model_ready_at):
            pod.model_loaded_logged = True
            loaded = (f"INFO: model {self.model_name(pod)} loaded; serving on port 8000" if serves_vllm(pod.image)
                      else f"INFO: service ready; listening on {self._http_ports_text(pod)}")
            self._log(pod, "container", loaded, pod.model_ready_at)

    def _become_running(self, pod: Pod, at: float) -> None:
        pod.status, pod.phase_started_at = PodStatus.RUNNING, at
        pod.running_since = at
        if pod.started_at is None:
            pod.started_at = at
        self._start_model(pod, at)
        self._log(pod, "system", "Container started; pod is RUNNING", at)

    def _start_model(self, pod: Pod, at: float) -> None:
        load = self.timeline.faults.model_load_seconds
        pod.model_ready_at = at + (self.timeline.settings.model_load_seconds if load is None else load)
        pod.model_loaded_logged = False
        pod.model_crashed = False
        pod.container_generation += 1
        self.model_stats[pod.id] = ModelStats()
        self.service_stats[pod.id] = ServiceStats()
        starting = (f"INFO: loading model {self.model_name(pod)}" if serves_vllm(pod.image)
                    else f"INFO: starting service {pod.image}")
        self._log(pod, "container", starting, at)

    @staticmethod
    def _http_ports_text(pod: Pod) -> str:
        return ", ".join(f"port {port}" for port in sorted(pod.http_ports())) or "no http port"

    # -- reads --

    def get_pod(self, pod_id: str) -> Pod:
        pod = self.pods.get(pod_id)
        if pod is None:
            raise WorldError(404, f"pod {pod_id} not found")
        self._advance(pod, self.timeline.now())
        return pod

    def list_pods(self) -> list[Pod]:
        self.advance()
        return list(self.pods.values())

    def pod_for_key(self, key: str) -> Pod | None:
        for pod in self.pods.values():
            if secrets.compare_digest(pod.pod_key, key):
                return pod
        return None

    def model_name(self, pod: Pod) -> str:
        return (pod.arg_value("--served-model-name") or pod.arg_value("--model")
                or pod.env.get("MODEL_NAME") or "sandbox-model")

    def max_model_len(self, pod: Pod) -> int:
        value = pod.arg_value("--max-model-len")
        return int(value) if value and value.isdigit() and int(value) > 0 else 8192

    def model_api_key(self, pod: Pod) -> str | None:
        return pod.arg_value("--api-key") or pod.env.get("VLLM_API_KEY") or None

    def model_state(self, pod_id: str, port: int) -> tuple[str, Pod | None]:
        """What RunPod's proxy would find at {pod_id}-{port}: 'missing' (404), 'down' (502) or 'ready'."""
        pod = self.pods.get(pod_id)
        if pod is None or port not in pod.http_ports():
            return "missing", pod
        self._advance(pod, self.timeline.now())
        ready = (pod.status == PodStatus.RUNNING and not pod.model_crashed
                 and pod.model_ready_at is not None and self.timeline.now() >= pod.model_ready_at)
        return ("ready" if ready else "down"), pod

    def cost_usd_per_hour(self, pod: Pod) -> float:
        if pod.status not in ACTIVE_STATUSES:
            return 0.0
        return round(GPU_BY_ID[pod.gpu_id].price(pod.cloud) * pod.gpu_count, 4)

    # -- the v2 Pod object --

    def pod_json(self, pod: Pod) -> dict[str, Any]:
        now = self.timeline.now()
        self._advance(pod, now)
        running = pod.status == PodStatus.RUNNING
        host = _digest(pod.id)
        public_ip = f"203.0.113.{host % 250 + 2}"  # TEST-NET-3: clearly not a real host
        ssh_public_port = 10000 + host % 50000
        ssh_user = f"{pod.id}-{host & 0xFFFFFFFF:08x}"
        direct = None
        if running and "22/tcp" in pod.ports:
            direct = {"host": public_ip, "port": ssh_public_port, "username": "root",
                      "command": f"ssh root@{public_ip} -p {ssh_public_port}"}
        return {
            "id": pod.id,
            "name": pod.name,
            "status": str(pod.status),
            "actions": list(pod.actions),
            "image": pod.image,
            "args": pod.args,
            "disk": pod.disk_gb,
            "mounts": pod.mounts,
            "ports": list(pod.ports),
            "env": dict(pod.env),
            "registry": pod.registry,
            "gpu": {"id": pod.gpu_id, "count": pod.gpu_count},
            "cloud": pod.cloud,
            "dataCenterId": pod.data_center_id,
            "cudaVersion": pod.cuda_version,
            "ssh": {
                "proxy": {"host": "ssh.runpod.io", "port": 22, "username": ssh_user,
                          "command": f"ssh {ssh_user}@ssh.runpod.io"},
                "direct": direct,
            },
            "template": None,
            "cost": self.cost_usd_per_hour(pod),
            "locked": pod.locked,
            "globalNetworking": {"enabled": pod.global_networking},
            "runtime": self._runtime_json(pod, now, public_ip, ssh_public_port) if running else None,
            "createdAt": rfc3339(pod.created_at),
            "startedAt": None if pod.started_at is None else rfc3339(pod.started_at),
        }

    def _runtime_json(self, pod: Pod, now: float, public_ip: str, ssh_port: int) -> dict[str, Any]:
        loaded = pod.model_ready_at is not None and now >= pod.model_ready_at and not pod.model_crashed
        busy = (self.model_stats.get(pod.id, ModelStats()).running > 0
                or self.service_stats.get(pod.id, ServiceStats()).active > 0)
        private_ip = f"100.65.{_digest(pod.id + 'ip') % 250}.{_digest(pod.id) % 250 + 2}"
        ports = []
        for spec in pod.ports:
            number, _, protocol = spec.partition("/")
            if not number.isdigit():
                continue
            if protocol == "tcp":
                public = ssh_port if number == "22" else 10000 + _digest(pod.id + number) % 50000
                ports.append({"ip": public_ip, "private": int(number), "public": public, "type": "tcp"})
            else:
                ports.append({"ip": private_ip, "private": int(number), "public": None, "type": protocol})
        return {
            "uptime": int(now - (pod.running_since or now)),
            # vLLM claims ~90% of GPU memory once the model is loaded; compute only moves while serving.
            "gpus": [{"util": 87 if busy else 0, "memoryUtil": 91 if loaded else 3}] * pod.gpu_count,
            "cpu": {"util": 12 if busy else 1},
            "memory": {"util": 35 if loaded else 4},
            "ports": ports,
        }

    # -- mutations --

    def create_pod(self, request: Mapping[str, Any]) -> Pod:
        """Place a pod from a CreatePodRequest that already passed validation (schema and rules)."""
        gpu_request = request["gpu"]
        gpu = GPU_BY_ID.get(gpu_request["id"])
        if gpu is None:
            known = ", ".join(g.id for g in GPU_MODELS)
            raise WorldError(400, f"unknown GPU type '{gpu_request['id']}'; the sandbox offers: {known}")
        count = int(gpu_request.get("count", 1))
        cloud = request.get("cloud", "SECURE")
        if count > gpu.max_count(cloud):
            raise WorldError(400, f"gpu.count {count} exceeds the largest {gpu.id} machine in {cloud} "
                                  f"cloud ({gpu.max_count(cloud)} GPUs)")
        self.timeline.check_balance()
        if self.timeline.faults.take("fail_creates"):
            raise WorldError(400, NO_CAPACITY_DETAIL)
        data_center = place(self.timeline.stock, gpu.id, count, cloud, wanted=request.get("dataCenterIds") or [],
                             allowed_cuda=gpu_request.get("allowedCudaVersions") or [],
                             min_cuda=gpu_request.get("minCudaVersion"))
        if data_center is None:
            raise WorldError(400, NO_CAPACITY_DETAIL)
        now = self.timeline.now()
        pod = Pod(
            id=self._new_pod_id(),
            name=request["name"],
            image=request["image"],
            args=request.get("args", ""),
            env=dict(request.get("env", {})),
            ports=list(request.get("ports", [])),
            disk_gb=int(request.get("disk", 50)),
            mounts=dict(request.get("mounts", {})),
            registry=request.get("registry"),
            gpu_id=gpu.id,
            gpu_count=count,
            cloud=cloud,
            data_center_id=data_center.id,
            cuda_version=data_center.cuda_version,
            locked=False,
            global_networking=bool(request.get("globalNetworking", False)),
            created_at=now,
            status=PodStatus.PROVISIONING,
            phase_started_at=now,
            pod_key="rpa_" + secrets.token_hex(20).upper(),
        )
        self.pods[pod.id] = pod
        self._hold(pod)
        self._log(pod, "system", f"Pod rented: {count} x {gpu.id} in {data_center.id} ({cloud}); "
                                 f"pulling image {pod.image}", now)
        return pod

    def _new_pod_id(self) -> str:
        while True:
            pod_id = "".join(self.timeline.rng.choice(_ID_ALPHABET) for _ in range(14))
            if pod_id not in self.pods:
                return pod_id

    def _hold(self, pod: Pod) -> None:
        """Take the pod's GPUs from stock and start billing (the caller checked that stock suffices)."""
        self.timeline.hold((pod.gpu_id, pod.data_center_id, pod.cloud), pod.gpu_count, pod.id,
                           self.cost_usd_per_hour(pod))

    def _release(self, pod: Pod) -> None:
        self.timeline.release((pod.gpu_id, pod.data_center_id, pod.cloud), pod.gpu_count, pod.id)

    def act(self, pod_id: str, action: str) -> Pod | None:
        """Apply a v2 pod action; returns the pod, or None after terminate."""
        pod = self.get_pod(pod_id)
        if action not in pod.actions:
            why = " (the pod is locked)" if pod.locked and action in ALLOWED_ACTIONS[pod.status] else ""
            allowed = ", ".join(pod.actions) or "none"
            raise WorldError(409, f"cannot {action} pod {pod.id} in status {pod.status}{why}; "
                                  f"allowed actions: {allowed}")
        if action == "terminate":
            self.terminate(pod_id)
            return None
        if action == "stop":
            self._stop(pod, PodStatus.EXITED, "Pod stopped by user")
        elif action == "start":
            self._start(pod)
        elif action == "restart":
            self._log(pod, "system", "Restarting container")
            pod.running_since = self.timeline.now()
            self._start_model(pod, self.timeline.now())
        self.timeline.dirty = True
        return pod

    def _stop(self, pod: Pod, status: PodStatus, reason: str) -> None:
        if pod.status in ACTIVE_STATUSES:
            self._release(pod)
        pod.status, pod.phase_started_at = status, self.timeline.now()
        pod.running_since = None
        pod.model_ready_at = None
        self._log(pod, "system", reason)

    def _start(self, pod: Pod) -> None:
        self.timeline.check_balance()
        free = self.timeline.stock.get((pod.gpu_id, pod.data_center_id, pod.cloud), 0)
        if self.timeline.faults.take("refuse_resumes") or pod.host_taken or free < pod.gpu_count:
            raise WorldError(400, RESUME_REFUSED_DETAIL)
        pod.status, pod.phase_started_at = PodStatus.STARTING, self.timeline.now()
        self._hold(pod)
        self._log(pod, "system", f"Pod resumed on its host in {pod.data_center_id}; starting container")

    def terminate(self, pod_id: str) -> None:
        pod = self.get_pod(pod_id)
        if pod.status in ACTIVE_STATUSES:
            self._release(pod)
        del self.pods[pod_id]
        self.model_stats.pop(pod_id, None)
        self.service_stats.pop(pod_id, None)
        self.timeline.dirty = True

    def update_pod(self, pod_id: str, changes: Mapping[str, Any]) -> Pod:
        """PATCH a pod (validated UpdatePodRequest). Changing the container resets it, like RunPod."""
        pod = self.get_pod(pod_id)
        if "templateId" in changes:
            raise WorldError(404, f"template {changes['templateId']} not found")
        if "mounts" in changes:
            self._check_mount_change(pod, changes["mounts"])
        container_changed = False
        simple = {"name": "name", "image": "image", "args": "args", "disk": "disk_gb", "locked": "locked",
                  "registry": "registry", "globalNetworking": "global_networking"}
        for key, attribute in simple.items():
            if key in changes and getattr(pod, attribute) != changes[key]:
                setattr(pod, attribute, changes[key])
                container_changed |= key in ("image", "args", "disk", "registry")
        if "env" in changes and changes["env"] != pod.env:
            pod.env, container_changed = dict(changes["env"]), True
        if "ports" in changes and changes["ports"] != pod.ports:
            pod.ports, container_changed = list(changes["ports"]), True
        if changes.get("mounts"):
            pod.mounts = {**pod.mounts, **changes["mounts"]}
        if container_changed and pod.status == PodStatus.RUNNING:
            self._log(pod, "system", "Pod configuration changed; resetting container")
            pod.running_since = self.timeline.now()
            self._start_model(pod, self.timeline.now())
        self.timeline.dirty = True
        return pod

    def _check_mount_change(self, pod: Pod, mounts: Mapping[str, Any]) -> None:
        if mounts.get("network") == []:
            raise WorldError(400, "mounts.network: clearing mounts is not supported")
        for kind in ("persistent", "network"):
            if kind in mounts and kind not in pod.mounts:
                raise WorldError(400, f"mounts.{kind}: the mount kind is fixed at create")
        if "network" in mounts and mounts["network"][0]["volumeId"] != pod.mounts["network"][0]["volumeId"]:
            raise WorldError(400, "mounts.network[0].volumeId: a network mount's volume cannot change")

    # -- the platform acting on pods (control endpoints) --

    def set_status(self, pod_id: str, status: str) -> Pod:
        """The platform stops (spot interruption) or breaks (host failure) a pod."""
        pod = self.get_pod(pod_id)
        if status not in ("EXITED", "ERROR"):
            raise WorldError(422, "status must be EXITED or ERROR")
        reason = ("Pod stopped by the platform (interrupted)" if status == "EXITED"
                  else "Pod failed: host error")
        self._stop(pod, PodStatus(status), reason)
        return pod

    def take_host(self, pod_id: str) -> Pod:
        """Someone else rents this pod's host GPUs: every later resume of it is refused."""
        pod = self.get_pod(pod_id)
        pod.host_taken = True
        self.timeline.dirty = True
        return pod

    def crash_model(self, pod_id: str) -> Pod:
        pod = self.get_pod(pod_id)
        pod.model_crashed = True
        self._log(pod, "container", "ERROR: model server crashed (engine dead); restart the pod")
        return pod
