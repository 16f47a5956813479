"""pod_config.toml → frozen dataclasses, with strict validation and environment overrides.

Every table and key is declared once, in the dataclasses below; the loader walks those declarations,
so an unknown key, a wrong type or an impossible value is an error that names the file, the table and
the key, and says what is allowed. `RPM_<TABLE>_<KEY>` environment variables override single keys;
`RUNPOD_API_KEY` supplies the RunPod key and `RUNPOD_API_URL` the base URL (that is how the emulator
is selected).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runpod_manager import backends, display
from runpod_manager.errors import ConfigError
from runpod_manager.paths import CONFIG_FILENAME, Paths, make_dirs, read_regular_file, write_private_file

CONFIG_VERSION = 1
MAX_CONFIG_BYTES = 1024 * 1024  # the commented template is ~10 KB; a config past a megabyte is not one
DEFAULT_POD_URL_TEMPLATE = "https://{pod_id}-{port}.proxy.runpod.net"
DEFAULT_API_BASE_URL = "https://api.runpod.io"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_CUTOFF_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_CUDA_RE = re.compile(r"^\d+\.\d+$")
_PORT_RE = re.compile(r"^\d{1,5}/(http|tcp)$")
# host, IPv4 or [IPv6], with an optional port (a Host header's form), or "*" for any
_HOST_RE = re.compile(r"^(\*|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:[0-9]{1,5})?)$")
_ORIGIN_RE = re.compile(r"^(\*|[a-z][a-z0-9+.-]*://[^/\s]+)$")  # scheme://host[:port], as browsers send it
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
# An http pod takes uploads (audio, images, archives): its default body limit is far above [proxy]
# max_body_bytes, which keeps guarding /v1 (a JSON body of 8 MB is already a mistake).
DEFAULT_HTTP_MAX_BODY_BYTES = 10 * 1024**3


def _meta(doc: str, **rules: Any) -> dict[str, Any]:
    return {"doc": doc, **rules}


@dataclass(frozen=True)
class PodConfig:
    name: str = field(default="default", metadata=_meta(
        "Config name: pods are named rpm-<name>-<install id>-<random>; the rpm- prefix marks pods rpm owns, "
        "the install id (pod_state.json) the state directory that made them."))
    model: str = field(default="Qwen/Qwen2.5-Coder-1.5B-Instruct", metadata=_meta(
        "Model the pod serves (passed to vLLM as --model)."))
    gpu_types: tuple[str, ...] = field(default=("NVIDIA GeForce RTX 4090",), metadata=_meta(
        "GPU type ids in order of preference (see `rpm refresh-catalog`).", non_empty=True))
    gpu_count: int = field(default=1, metadata=_meta("GPUs per pod.", minimum=1, maximum=16))
    cloud: str = field(default="SECURE", metadata=_meta(
        "SECURE or COMMUNITY.", choices=("SECURE", "COMMUNITY")))
    image: str = field(default="vllm/vllm-openai:latest", metadata=_meta(
        "Container image; leave empty when template_id gives one."))
    template_id: str = field(default="", metadata=_meta("RunPod template id (optional)."))
    container_disk_gb: int = field(default=50, metadata=_meta("Container disk (wiped on stop).", minimum=1))
    volume_gb: int = field(default=0, metadata=_meta(
        "Persistent volume on the pod's host, kept across stop/start; 0 for none.", minimum=0))
    volume_mount_path: str = field(default="/workspace", metadata=_meta("Mount path of the volume."))
    network_volume_id: str = field(default="", metadata=_meta(
        "Network volume id (replaces volume_gb and pins the data center)."))
    port: int = field(default=8000, metadata=_meta("HTTP port the model server listens on.",
                                                   minimum=1, maximum=65535))
    env: Mapping[str, str] = field(default_factory=dict, repr=False, metadata=_meta(
        "Environment of the pod (e.g. HF_TOKEN); kept out of logs and output. A token here makes the file "
        "need mode 0600.", sensitive=True))
    extra_args: str = field(default="", metadata=_meta(
        "Extra vLLM arguments appended after the ones rpm builds."))
    args: str = field(default="", metadata=_meta(
        "Full container arguments; overrides the vLLM arguments rpm builds (then {upstream_key}, "
        "{model} and {port} are substituted)."))
    max_model_len: int = field(default=0, metadata=_meta("vLLM --max-model-len; 0 = model default.",
                                                         minimum=0))
    data_centers: tuple[str, ...] = field(default=(), metadata=_meta(
        "Preferred data center ids, in order; empty lets RunPod choose."))
    allowed_cuda_versions: tuple[str, ...] = field(default=(), metadata=_meta(
        "Host CUDA versions the image works with, e.g. [\"12.8\"]; empty accepts any.",
        pattern=_CUDA_RE))
    max_price_per_hour: float = field(default=0.0, metadata=_meta(
        "Highest price in USD/hour for the whole pod; 0 = no limit.", minimum=0))
    pod_id: str = field(default="", metadata=_meta(
        "Adopt an existing pod made outside rpm (e.g. in the console): rpm resumes and stops it, never creates "
        "or terminates it. Empty: rpm creates its own pods."))
    replicas: int = field(default=1, metadata=_meta(
        "Most pods of this spec rpm keeps for its model: a second one is woken only when requests queue.",
        minimum=1, maximum=16))
    aliases: tuple[str, ...] = field(default=(), metadata=_meta(
        "Other model names clients may send for this pod (besides model and --served-model-name)."))
    replica_queue_depth: int = field(default=4, metadata=_meta(
        "Requests waiting for this model that, sustained for replica_queue_seconds, wake another replica.",
        minimum=1))
    replica_queue_seconds: float = field(default=10.0, metadata=_meta(
        "How long the queue must stay over replica_queue_depth before another replica is woken.", minimum=0))
    kind: str = field(default="openai", metadata=_meta(
        "openai: a model server (vLLM), routed by model under /v1; http: any HTTP/WebSocket service (ComfyUI, "
        "a FastAPI app), routed by path under /pods/<name>/ and at listen_port.", choices=("openai", "http")))
    backend: str = field(default=backends.POD, metadata=_meta(
        "How the entry runs on RunPod: pod (a GPU pod rpm creates or adopts, resumes, stops and terminates). "
        "kind is its protocol; serverless (an endpoint) is not available yet.", choices=backends.NAMES))
    health_path: str = field(default="/", metadata=_meta(
        "kind = http: the path whose answer below 500 (with RunPod saying RUNNING) makes the pod ready."))
    extra_ports: tuple[int, ...] = field(default=(), metadata=_meta(
        "kind = http: further HTTP ports of the service besides port, each exposed on the pod and routed as "
        "/pods/<name>:<port>/<path>.", minimum=1, maximum=65535))
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, metadata=_meta(
        "kind = http: headers rpm adds to every request it forwards to the service (e.g. a key it takes); "
        "kept out of logs and output. A credential here makes the file need mode 0600.", sensitive=True))
    listen_port: int = field(default=0, metadata=_meta(
        "kind = http: a local port (on [proxy] host) where the service owns the root path, woken on demand "
        "(for web UIs that fetch absolute paths); 0 for none.", minimum=0, maximum=65535))
    max_body_bytes: int = field(default=0, metadata=_meta(
        f"kind = http: largest request body forwarded to the service (413 above it); 0 = "
        f"{DEFAULT_HTTP_MAX_BODY_BYTES // 1024**3} GiB. /v1 requests keep [proxy] max_body_bytes.", minimum=0))
    websocket_activity: str = field(default="client", metadata=_meta(
        "Which WebSocket frames through /pods/<name>/ (and listen_port) count as activity for idle stop: client "
        "(frames the client sends; the service's own only while a request to the pod is in flight, so a "
        "forgotten tab on a service that pushes status does not hold the GPU) or both (every data frame).",
        choices=("client", "both")))
    max_connections: int = field(default=256, metadata=_meta(
        "Most connections the proxy holds open to this pod at once (each replica its own): its requests in "
        "flight and its WebSockets. A WebSocket beyond it is answered 503 at once; a request beyond it waits "
        "up to 30 s for one to free, then 503. Other pods never wait for this pod's connections.",
        minimum=1, maximum=100_000))

    @property
    def is_http(self) -> bool:
        return self.kind == "http"

    @property
    def body_limit_bytes(self) -> int:
        """The largest body an http pod's routes forward (max_body_bytes, or its default)."""
        return self.max_body_bytes or DEFAULT_HTTP_MAX_BODY_BYTES

    @property
    def ports(self) -> tuple[int, ...]:
        """Every HTTP port the pod exposes: port first, then extra_ports."""
        return (self.port, *self.extra_ports)


@dataclass(frozen=True)
class LimitsConfig:
    runtime_seconds: int = field(default=4 * 3600, metadata=_meta(
        "Longest a lease may last; the pod is ended when it runs out.", minimum=1))
    daily_cutoff: str = field(default="00:00", metadata=_meta(
        "Local time (HH:MM or HH:MM:SS) at which every open lease ends; empty disables it."))
    timezone: str = field(default="local", metadata=_meta(
        "IANA time zone for daily_cutoff and the spend day, or \"local\"."))
    cutoff_action: str = field(default="terminate", metadata=_meta(
        "What the cutoff and runtime limit do: terminate or stop.", choices=("terminate", "stop")))
    idle_timeout_seconds: int = field(default=15 * 60, metadata=_meta(
        "Idle time (no proxied request) before idle_action; 0 disables idle stop.", minimum=0))
    idle_action: str = field(default="stop", metadata=_meta(
        "stop (fast resume, disk kept and billed) or terminate (frees everything).",
        choices=("stop", "terminate")))
    max_daily_spend_usd: float = field(default=20.0, metadata=_meta(
        "Spend cap per day in USD; reaching it terminates the pod; 0 disables.", minimum=0))
    on_resume_failure: str = field(default="replace", metadata=_meta(
        "When a stopped pod cannot resume (host GPU taken): replace it with a new pod, or fail.",
        choices=("replace", "fail")))
    pod_guard: bool = field(default=False, metadata=_meta(
        "Add an in-pod guard that removes the pod at the lease deadline (shell-command images)."))
    billing_check_seconds: float = field(default=1800.0, metadata=_meta(
        "How often a pass reads RunPod billing to correct the spend estimate (always near the cap).",
        minimum=0))
    sweep_orphans: bool = field(default=True, metadata=_meta(
        "Terminate this install's rpm-<name>-<install id>-… pods that state does not own (never another "
        "install's)."))
    warm_hours: str = field(default="", metadata=_meta(
        "Local windows (in timezone) in which the pod is kept warm, e.g. \"Mon-Fri 08:55-18:00\" or "
        "\"Mon-Fri 09:00-17:00, Sat 10:00-14:00\": a lease opens so that the pod is ready at the start, and "
        "idle stop uses warm_idle_timeout_seconds inside; empty disables it."))
    warm_idle_timeout_seconds: int = field(default=3600, metadata=_meta(
        "Idle time before idle_action inside a warm_hours window; 0 disables idle stop there.", minimum=0))


@dataclass(frozen=True)
class StartupConfig:
    initial_wait_seconds: float = field(default=5.0, metadata=_meta(
        "Wait before the first readiness poll.", minimum=0))
    poll_interval_seconds: float = field(default=5.0, metadata=_meta(
        "Seconds between readiness polls.", minimum=0.01))
    ready_timeout_seconds: float = field(default=1200.0, metadata=_meta(
        "Give up waiting for readiness after this long.", minimum=1))
    max_startup_attempts: int = field(default=3, metadata=_meta(
        "Create attempts per GPU type / data center before moving on.", minimum=1))
    lock_wait_seconds: float = field(default=10.0, metadata=_meta(
        "How long interactive commands wait for another rpm process's state lock.", minimum=0))


@dataclass(frozen=True)
class ProxyConfig:
    host: str = field(default="127.0.0.1", metadata=_meta("Address the proxy binds."))
    port: int = field(default=8080, metadata=_meta("Port the proxy listens on.", minimum=1, maximum=65535))
    use_https: bool = field(default=False, metadata=_meta("Serve TLS with ssl_cert and ssl_key."))
    ssl_cert: str = field(default="", metadata=_meta("PEM certificate path (use_https)."))
    ssl_key: str = field(default="", metadata=_meta("PEM private key path (use_https)."))
    api_keys: tuple[str, ...] = field(default=(), repr=False, metadata=_meta(
        "Keys clients must send as Bearer tokens; empty allows anyone on a loopback bind.", sensitive=True))
    cors_allow_origins: tuple[str, ...] = field(default=(), metadata=_meta(
        "Web page origins (e.g. \"http://localhost:3000\", or \"*\" for any) allowed to call the proxy from a "
        "browser; empty refuses every web page, so no site you visit can spend GPU time through it.",
        pattern=_ORIGIN_RE))
    allowed_hosts: tuple[str, ...] = field(default=(), metadata=_meta(
        "Host header values the proxy answers besides its own (127.0.0.1, localhost and [::1] with its port), "
        "e.g. \"gpu.example.com\" behind a reverse proxy (a name without a port: any port); other Hosts get "
        "421, so a web page cannot reach a loopback proxy through DNS rebinding. On a bind beyond loopback "
        "(which needs keys) any Host is answered unless this is set; \"*\" answers any Host.",
        pattern=_HOST_RE))
    trust_forwarded: bool = field(default=False, metadata=_meta(
        "Behind a reverse proxy that sets X-Forwarded-For: pass the client's X-Forwarded-For on with the peer's "
        "address appended; false replaces it with the peer's address."))
    wake_on_request: bool = field(default=True, metadata=_meta("Start the pod when a request arrives."))
    max_queue_size: int = field(default=64, metadata=_meta(
        "Requests that may wait for a wake at once.", minimum=1))
    queue_timeout_seconds: float = field(default=900.0, metadata=_meta(
        "Longest a request waits for the pod to wake.", minimum=1))
    wake_hold_seconds: float = field(default=240.0, metadata=_meta(
        "Longest a non-streaming request is held while the pod wakes; then it gets 503 + Retry-After and its "
        "retry joins the same wake. Keep it under 300: Node's fetch drops requests without headers by then.",
        minimum=1))
    max_retries: int = field(default=3, metadata=_meta(
        "Upstream retries before the first byte reached the client.", minimum=0))
    retry_delay_seconds: float = field(default=1.0, metadata=_meta("Delay between retries.", minimum=0))
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata=_meta(
        "Largest request body accepted.", minimum=1024))
    fim_template: str = field(default="", metadata=_meta(
        "Prompt template for `suffix` completions, e.g. \"<|fim_prefix|>{prefix}<|fim_suffix|>"
        "{suffix}<|fim_middle|>\"; empty answers 400."))
    reconcile_interval_seconds: float = field(default=5.0, metadata=_meta(
        "How often the running proxy enforces limits and idle stop.", minimum=0.1))
    enable_profiling: bool = field(default=False, metadata=_meta("Serve /debug/cache."))
    request_log_keep_days: int = field(default=30, metadata=_meta(
        "Days the request log (logs/requests.jsonl, one line per request; read by `rpm report` and `rpm simulate "
        "--from-log`) is kept; 0 writes none and deletes what an earlier setting kept.", minimum=0, maximum=3660))
    # Queued jobs (`Prefer: respond-async`, proxy/jobs.py).
    jobs_concurrency: int = field(default=1, metadata=_meta(
        "Jobs (requests sent with `Prefer: respond-async`) each pod runs at once, in submission order; 1 suits "
        "a service that processes one file at a time, a model server that batches takes more.",
        minimum=1, maximum=256))
    jobs_max_count: int = field(default=1000, metadata=_meta(
        "Most jobs kept (queued, running, and finished ones until their result expires); more get 503.",
        minimum=1))
    wake_spool_max_bytes: int = field(default=4 * 1024 * 1024 * 1024, metadata=_meta(
        "Uploads (with a Content-Length) to an http pod that is waking are received into 0600 files in the state "
        "directory, at most this many bytes at once, so a client with a short write timeout finishes sending; "
        "beyond it, or 0, a body waits for the pod in the client's socket.", minimum=0))
    jobs_max_bytes: int = field(default=1024 * 1024 * 1024, metadata=_meta(
        "Most bytes the jobs' request bodies and stored results take in the state directory; more get 503.",
        minimum=1024))
    jobs_result_ttl_seconds: float = field(default=24 * 3600.0, metadata=_meta(
        "How long a finished job's status and result are kept.", minimum=1))
    key_limit_window_seconds: int = field(default=60, metadata=_meta(
        "Window in which each key's --rpm and --tpm (`rpm keys`) are counted; a shorter window gets the limits "
        "scaled to it (60 rpm in 10 s windows: 10 per window), which spreads a key's burst out.", minimum=1))


@dataclass(frozen=True)
class KeysConfig:
    """How the proxy applies team keys' limits (`rpm keys create --tpm/--max-concurrent/--daily-budget-usd`)."""

    queue_seconds: float = field(default=30.0, metadata=_meta(
        "How long a request of a key at its max_concurrent (--max-concurrent) waits for one of the key's requests to "
        "end, first come first served, before it is answered 429 (with a Retry-After of at least its pod's "
        "median answer time); 0 answers at once.", minimum=0))
    default_max_tokens_estimate: int = field(default=512, metadata=_meta(
        "Tokens a request that names no max_tokens is expected to generate: reserved against its key's tokens "
        "per minute (--tpm) when it is admitted, with its prompt at ~4 characters a token, and settled with "
        "the pod's reported usage when it ends.", minimum=1))


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = field(default=True, metadata=_meta("Cache deterministic responses."))
    dir: str = field(default="", metadata=_meta("Cache directory; empty = rpm's cache dir."))
    max_entries: int = field(default=2000, metadata=_meta("Most entries kept.", minimum=1))
    max_bytes: int = field(default=256 * 1024 * 1024, metadata=_meta("Most bytes kept.", minimum=1024))
    ttl_seconds: int = field(default=24 * 3600, metadata=_meta("Entry lifetime.", minimum=1))


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = field(default=DEFAULT_API_BASE_URL, metadata=_meta(
        "RunPod API base URL (RUNPOD_API_URL overrides it)."))
    api_key: str = field(default="", repr=False, metadata=_meta(
        "RunPod API key; prefer the RUNPOD_API_KEY variable. A file holding it must be mode 0600.",
        secret=True))
    pod_url_template: str = field(default=DEFAULT_POD_URL_TEMPLATE, metadata=_meta(
        "URL of the pod's HTTP port, with {pod_id} and {port}."))
    connect_timeout_seconds: float = field(default=5.0, metadata=_meta("Connect timeout.", minimum=0.1))
    read_timeout_seconds: float = field(default=30.0, metadata=_meta("Read timeout.", minimum=0.1))
    max_retries: int = field(default=4, metadata=_meta("Retries of idempotent calls.", minimum=0))


@dataclass(frozen=True)
class Config:
    """The whole config. `pod` and `limits` are those of the pod this Config is about: for a file with one
    `[pod]` table that is the only pod; `for_pod(name)` gives each `[pods.<name>]` pod its own view, with
    its `[pods.<name>.limits]` merged over `[limits]` key by key. `pods` lists every configured pod, and
    `account_limits` is the top-level `[limits]` (its max_daily_spend_usd binds all pods together)."""

    pod: PodConfig = field(default_factory=PodConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    startup: StartupConfig = field(default_factory=StartupConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    version: int = CONFIG_VERSION
    source: Path | None = None
    pods: tuple[PodConfig, ...] = ()  # every configured pod (empty: just `pod`)
    pod_limits: Mapping[str, LimitsConfig] = field(default_factory=dict)  # merged limits per pod name
    account_limits: LimitsConfig | None = None  # the top-level [limits]; None: `limits` is it

    @property
    def all_pods(self) -> tuple[PodConfig, ...]:
        return self.pods or (self.pod,)

    @property
    def account(self) -> LimitsConfig:
        return self.account_limits or self.limits

    def pod_named(self, name: str) -> PodConfig | None:
        return next((pod for pod in self.all_pods if pod.name == name), None)

    def for_pod(self, name: str, replica: int = 1) -> Config:
        """This config as seen by one pod (replica k > 1 of pod "chat" is the pod named "chat-r<k>")."""
        pod = self.pod_named(name)
        if pod is None:
            raise ConfigError(f"no pod named {name!r} in {self.source or 'the config'}",
                              hint=f"configured: {', '.join(p.name for p in self.all_pods)}")
        limits = self.pod_limits.get(name, self.account)
        if replica > 1:
            pod = dataclasses.replace(pod, name=replica_name(name, replica))
        return dataclasses.replace(self, pod=pod, limits=limits, account_limits=self.account)

    def replica_configs(self, name: str) -> list[Config]:
        pod = self.pod_named(name)
        return [self.for_pod(name, k) for k in range(1, (pod.replicas if pod else 1) + 1)]

    def every_pod(self) -> list[Config]:
        """One Config per pod rpm may run: every configured pod and each of its replicas."""
        return [replica for pod in self.all_pods for replica in self.replica_configs(pod.name)]

    @property
    def pod_name_prefix(self) -> str:
        return f"rpm-{self.pod.name}-"

    @property
    def zone(self) -> ZoneInfo | None:
        """The configured zone; None means the machine's local zone."""
        return None if self.limits.timezone == "local" else ZoneInfo(self.limits.timezone)

    @property
    def cutoff_time(self) -> dt_time | None:
        return parse_cutoff(self.limits.daily_cutoff) if self.limits.daily_cutoff else None

    @property
    def warm_windows(self) -> tuple[WarmWindow, ...]:
        return parse_warm_hours(self.limits.warm_hours) if self.limits.warm_hours else ()

    def pod_url(self, pod_id: str, port: int | None = None) -> str:
        """The URL of the pod's HTTP port (`port`, default [pod] port), without a trailing slash."""
        return self.api.pod_url_template.format(pod_id=pod_id, port=port or self.pod.port).rstrip("/")

    def require_api_key(self) -> str:
        if not self.api.api_key:
            raise ConfigError(
                "no RunPod API key: set RUNPOD_API_KEY (or [api] api_key in a 0600 config file)",
                hint="for the emulator, run `rpm sandbox` and export the variables it prints",
            )
        return self.api.api_key


def replica_name(name: str, replica: int) -> str:
    """Replica k > 1 of pod "chat" runs as pod "chat-r<k>" (its own lease, record and rpm-chat-r<k>-… pod)."""
    return name if replica == 1 else f"{name}-r{replica}"


TABLES: dict[str, type] = {
    "pod": PodConfig,
    "limits": LimitsConfig,
    "startup": StartupConfig,
    "proxy": ProxyConfig,
    "keys": KeysConfig,
    "cache": CacheConfig,
    "api": ApiConfig,
}


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WARM_WINDOW_RE = re.compile(r"^([A-Za-z]{3})(?:-([A-Za-z]{3}))?\s+(\S+)-(\S+)$")


@dataclass(frozen=True)
class WarmWindow:
    """One warm_hours window: on these weekdays (0 = Monday), from start to end local time (end > start)."""

    weekdays: frozenset[int]
    start: dt_time
    end: dt_time


def parse_warm_hours(text: str) -> tuple[WarmWindow, ...]:
    """'Mon-Fri 08:55-18:00, Sat 10:00-14:00' → windows. Raises ValueError saying what is wrong."""
    windows = []
    for part in text.split(","):
        match = _WARM_WINDOW_RE.match(part.strip())
        if not match:
            raise ValueError(f"{part.strip()!r} is not of the form \"Mon-Fri 08:55-18:00\" or \"Sat 10:00-14:00\"")
        first, last = (_weekday(match[1]), _weekday(match[2] or match[1]))
        if last < first:
            raise ValueError(f"{match[1]}-{match[2]} runs backwards (a range goes Monday to Sunday)")
        start, end = parse_cutoff(match[3]), parse_cutoff(match[4])
        if end <= start:
            raise ValueError(f"{match[3]}-{match[4]} ends before it starts (windows cannot cross midnight)")
        windows.append(WarmWindow(frozenset(range(first, last + 1)), start, end))
    return tuple(windows)


def _weekday(name: str) -> int:
    if name.lower() not in _WEEKDAYS:
        raise ValueError(f"{name!r} is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")
    return _WEEKDAYS.index(name.lower())


def parse_cutoff(text: str) -> dt_time:
    match = _CUTOFF_RE.match(text.strip())
    if not match:
        raise ValueError("expected HH:MM or HH:MM:SS")
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError("hour must be 0-23, minutes and seconds 0-59")
    return dt_time(hour, minute, second)


# ---------------------------------------------------------------------------------------------- loading


def find_config_file(explicit: Path | None, env: Mapping[str, str], paths: Paths) -> Path | None:
    """--config, then RPM_CONFIG, then ./pod_config.toml, then the user config dir."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such config file (given with --config)")
        return explicit
    from_env = env.get("RPM_CONFIG")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (named by RPM_CONFIG)")
        return path
    for candidate in (Path.cwd() / CONFIG_FILENAME, paths.user_config_file):
        if candidate.is_file():
            return candidate
    return None


def load_config(
    explicit: Path | None = None, env: Mapping[str, str] | None = None, paths: Paths | None = None,
    *, required: bool = True,
) -> Config:
    """Find, read, override and validate the config. Raises ConfigError naming file/table/key."""
    from runpod_manager.paths import resolve_paths

    env = os.environ if env is None else env
    paths = paths or resolve_paths(env)
    path = find_config_file(explicit, env, paths)
    if path is None:
        if required:
            raise ConfigError(
                f"no {CONFIG_FILENAME} found (looked in --config, RPM_CONFIG, ./{CONFIG_FILENAME} "
                f"and {paths.user_config_file})",
                hint="run `rpm init` to write a commented one",
            )
        document: dict[str, Any] = {"version": CONFIG_VERSION}
    else:
        document = read_toml(path)
    return build_config(document, source=path, env=env)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per level of `[[[…` or `{a = {a = …`
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None


def build_config(document: Mapping[str, Any], *, source: Path | None, env: Mapping[str, str],
                 check_file_mode: bool = True) -> Config:
    where = str(source) if source else "built-in defaults"
    unknown_top = [k for k in document if k not in TABLES and k not in ("version", "pods")]
    for key in unknown_top:
        raise ConfigError(f"{where}: unknown table or key '{key}'"
                          f"{_did_you_mean(key, [*TABLES, 'pods', 'version'])}",
                          hint=f"allowed tables: {', '.join(TABLES)}, pods.<name>")
    version = document.get("version", CONFIG_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{where}: 'version' must be an integer, got {_value_name(version)}")
    if version != CONFIG_VERSION:
        raise ConfigError(f"{where}: config version {version} is not supported (this rpm reads version "
                          f"{CONFIG_VERSION})")
    secret_in_file = False
    sections: dict[str, Any] = {}
    # Which keys came from the environment, so a bad value is blamed on the variable, not the file.
    from_env: dict[tuple[str, str], str] = {}
    for table, cls in TABLES.items():
        raw_table = document.get(table, {})
        if not isinstance(raw_table, Mapping):
            raise ConfigError(f"{where}: [{table}] must be a table, got {_kind_name(raw_table)}")
        values = dict(raw_table)
        secret_in_file |= _holds_secret(cls, values)
        overrides = _env_overrides(table, cls, env)
        from_env.update({(table, key): value.variable for key, value in overrides.items()})
        values.update(overrides)
        sections[table] = _build_table(where, table, cls, values)
    api: ApiConfig = sections["api"]
    if env.get("RUNPOD_API_KEY"):
        api = dataclasses.replace(api, api_key=env["RUNPOD_API_KEY"])
    if env.get("RUNPOD_API_URL"):
        api = dataclasses.replace(api, base_url=_check_url("RUNPOD_API_URL", env["RUNPOD_API_URL"]))
        from_env[("api", "base_url")] = "RUNPOD_API_URL"
    sections["api"] = api
    pods: tuple[PodConfig, ...] = ()
    pod_limits: dict[str, LimitsConfig] = {}
    if "pods" in document:
        pods, pod_limits, pods_secret = _build_pods(where, document, sections["limits"], env)
        secret_in_file |= pods_secret
        sections["pod"] = pods[0]
    if secret_in_file and source is not None and check_file_mode:
        _refuse_readable_secret(source)
    config = Config(version=version, source=source, pods=pods, pod_limits=pod_limits, **sections)
    _cross_checks(where, config, from_env)
    _check_kinds(where, config, _pod_keys_given(document, env))
    return config


def _pod_keys_given(document: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, set[str]]:
    """Per pod name, the keys the file (or an RPM_POD_* variable) sets: what a kind may refuse."""
    if "pods" in document and isinstance(document["pods"], Mapping):
        return {name: set(table) for name, table in document["pods"].items() if isinstance(table, Mapping)}
    given = set(document.get("pod", {})) if isinstance(document.get("pod"), Mapping) else set()
    given |= {var[len("RPM_POD_"):].lower() for var in env if var.startswith("RPM_POD_")}
    name = document.get("pod", {}).get("name", "default") if isinstance(document.get("pod"), Mapping) else "default"
    return {str(name): given}


# Keys that mean something for one kind only. Setting one on the other kind is refused, never ignored: a
# model on an http pod would suggest /v1 routing that never happens, a listen_port on a vLLM pod a UI.
_OPENAI_ONLY = ("model", "aliases", "extra_args", "max_model_len", "replica_queue_depth", "replica_queue_seconds")
_HTTP_ONLY = ("health_path", "extra_ports", "headers", "listen_port", "max_body_bytes")


def _check_kinds(where: str, config: Config, given: Mapping[str, set[str]]) -> None:
    """kind = http pods: their own keys, their ports and listen ports (unique, not the proxy's)."""
    listen: dict[int, str] = {}
    for pod in config.all_pods:
        table = f"pods.{pod.name}" if config.pods else "pod"
        # Given and not the default: `rpm init`'s template spells out every key with its default value.
        keys = {key for key in given.get(pod.name, set())
                if key not in _DEFAULT_POD_VALUES or getattr(pod, key) != _DEFAULT_POD_VALUES[key]}
        if not pod.is_http:
            wrong = [key for key in _HTTP_ONLY if key in keys]
            if wrong:
                raise ConfigError(f"{where}: [{table}] {', '.join(wrong)} only apply to kind = \"http\" pods",
                                  hint=f'set kind = "http" in [{table}], or remove {", ".join(wrong)}')
            continue
        wrong = [key for key in _OPENAI_ONLY if key in keys]
        if wrong:
            raise ConfigError(f"{where}: [{table}] {', '.join(wrong)} only apply to kind = \"openai\" (vLLM) pods; "
                              "an http pod is routed by path (/pods/<name>/…), never by model",
                              hint=f"remove {', '.join(wrong)} from [{table}]")
        if not keys & {"image", "template_id", "pod_id"}:
            raise ConfigError(f"{where}: [{table}] kind = \"http\" needs image or template_id (or pod_id): the "
                              "default image is vLLM's")
        if pod.replicas > 1:
            raise ConfigError(f"{where}: [{table}] replicas must be 1 for kind = \"http\": a service's sessions "
                              "(a UI's WebSocket, its queue) live in one pod")
        if config.pod_limits.get(pod.name, config.limits).pod_guard and not pod.args:
            raise ConfigError(f"{where}: [{table}] kind = \"http\" with pod_guard needs args (the service's start "
                              "command): the guard is started by the pod's shell command, and rpm does not know "
                              "the image's own", hint="set args, or pod_guard = false for this pod")
        if not pod.health_path.startswith("/"):
            raise ConfigError(f"{where}: [{table}] health_path must start with \"/\", got {pod.health_path!r}")
        if pod.port in pod.extra_ports:
            raise ConfigError(f"{where}: [{table}] extra_ports lists port {pod.port} (the pod's port) again")
        for name in pod.headers:
            if not _HEADER_NAME_RE.match(name):
                raise ConfigError(f"{where}: [{table}] headers: {name!r} is not a header name")
            if name.lower() in _HOP_BY_HOP_NAMES or name.lower() in ("host", "content-length"):
                raise ConfigError(f"{where}: [{table}] headers: {name!r} is set by the proxy itself")
        if any(ch in value for value in pod.headers.values() for ch in "\r\n\0"):
            raise ConfigError(f"{where}: [{table}] headers: a value holds a line break or NUL")
        if pod.listen_port:
            if pod.listen_port == config.proxy.port:
                raise ConfigError(f"{where}: [{table}] listen_port {pod.listen_port} is the proxy's own port "
                                  "([proxy] port)", hint="choose another port for the service")
            other = listen.setdefault(pod.listen_port, pod.name)
            if other != pod.name:
                raise ConfigError(f"{where}: [{table}] listen_port {pod.listen_port} is also the listen_port of "
                                  f"pod {other!r}",
                                  hint="give each http pod its own listen_port")


_DEFAULT_POD_VALUES = {key: getattr(PodConfig(), key) for key in (*_OPENAI_ONLY, *_HTTP_ONLY)}
_HOP_BY_HOP_NAMES = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                               "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})


def _build_pods(where: str, document: Mapping[str, Any], account: LimitsConfig, env: Mapping[str, str]
                ) -> tuple[tuple[PodConfig, ...], dict[str, LimitsConfig], bool]:
    """`[pods.<name>]` tables: each a [pod] table named by its key, with an optional `[pods.<name>.limits]`
    that overrides `[limits]` key by key."""
    raw = document["pods"]
    if "pod" in document:
        raise ConfigError(f"{where}: [pod] and [pods.<name>] tables cannot both be used",
                          hint="move [pod] to [pods.<its name>]")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: [pods] must hold at least one [pods.<name>] table")
    if any(var.startswith("RPM_POD_") for var in env):
        variable = next(var for var in env if var.startswith("RPM_POD_"))
        raise ConfigError(f"environment variable {variable}: RPM_POD_* overrides a single [pod] table; with "
                          f"[pods.<name>] tables set the key in {where}")
    pods: list[PodConfig] = []
    limits: dict[str, LimitsConfig] = {}
    secret = False
    for name, table in raw.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: [pods.{name}] must be a table, got {_kind_name(table)}")
        values = dict(table)
        overrides = values.pop("limits", {})
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{where}: [pods.{name}.limits] must be a table, got {_kind_name(overrides)}")
        if "timezone" in overrides:
            raise ConfigError(f"{where}: [pods.{name}.limits] timezone cannot differ per pod: the spend day and "
                              "the cutoff are the account's", hint="set [limits] timezone")
        if values.setdefault("name", name) != name:
            raise ConfigError(f"{where}: [pods.{name}] name must be {name!r} (the table's name) or absent")
        secret |= _holds_secret(PodConfig, values)
        pods.append(_build_table(where, f"pods.{name}", PodConfig, values))
        limits[name] = _build_table(where, f"pods.{name}.limits", LimitsConfig,
                                    {**dataclasses.asdict(account), **overrides})
    return tuple(pods), limits, secret


# Names of [pod] env variables that carry credentials (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, …).
_SECRET_ENV_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Headers of [pods.<name>] headers that carry credentials (Authorization, X-API-Key, Cookie, …).
_SECRET_HEADER_NAME = re.compile(r"AUTH|TOKEN|KEY|SECRET|PASSWORD|COOKIE|CREDENTIAL", re.IGNORECASE)


def _holds_secret(cls: type, values: Mapping[str, Any]) -> bool:
    secret_keys = {f.name for f in dataclasses.fields(cls) if f.metadata.get("secret")}
    if cls is ProxyConfig:
        secret_keys.add("api_keys")
    env = values.get("env") if cls is PodConfig else None
    if isinstance(env, Mapping) and any(value and _SECRET_ENV_NAME.search(str(name)) for name, value in env.items()):
        return True
    headers = values.get("headers") if cls is PodConfig else None
    if isinstance(headers, Mapping) and any(value and _SECRET_HEADER_NAME.search(str(name))
                                            for name, value in headers.items()):
        return True
    return any(values.get(key) for key in secret_keys)


def _refuse_readable_secret(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: holds an API key or token but is readable by others (mode {stat.S_IMODE(mode):04o})",
            hint=f"run `chmod 600 {path}`, or move the key to RUNPOD_API_KEY (tokens in [pod] env: RPM_POD_ENV)",
        )


def _env_overrides(table: str, cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    prefix = f"RPM_{table.upper()}_"
    names = {f.name.upper(): f.name for f in dataclasses.fields(cls)}
    overrides: dict[str, Any] = {}
    for var, value in env.items():
        if not var.startswith(prefix):
            continue
        suffix = var[len(prefix):]
        if suffix not in names:
            raise ConfigError(f"environment variable {var}: [{table}] has no key "
                              f"'{suffix.lower()}'{_did_you_mean(suffix.lower(), [n.lower() for n in names])}")
        overrides[names[suffix]] = _EnvValue(var, value)
    return overrides


@dataclass(frozen=True)
class _EnvValue:
    """A string from the environment, coerced to the declared type of its key."""

    variable: str
    text: str


def _build_table(where: str, table: str, cls: type, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: [{table}] unknown key '{key}'{_did_you_mean(key, list(fields))}",
                hint=f"allowed keys: {', '.join(fields)}",
            )
        origin = f"{value.variable}" if isinstance(value, _EnvValue) else f"{where}: [{table}] {key}"
        kwargs[key] = _coerce(origin, hints[key], fields[key], value)
    return cls(**kwargs)


# No duration may pass a year (366 days): timedelta overflows past 999,999,999 days, and no limit, timeout or
# interval of rpm's means anything beyond this.
_MAX_SECONDS = 366 * 86400


def _coerce(origin: str, hint: Any, spec: dataclasses.Field[Any], value: Any) -> Any:
    rules: Mapping[str, Any] = spec.metadata
    if spec.name.endswith("_seconds") and "maximum" not in rules:
        rules = {**rules, "maximum": _MAX_SECONDS}
    secret = bool(rules.get("secret") or rules.get("sensitive"))
    if isinstance(value, _EnvValue):
        value = _parse_env_text(origin, hint, value.text, secret=secret)
    # A key given with the wrong type must not be echoed back in the error.
    describe = _kind_name if secret else _value_name
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{origin} must be true or false, got {describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin} must be a whole number, got {describe(value)}")
        _check_range(origin, value, rules)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{origin} must be a number, got {describe(value)}")
        if not math.isfinite(value):
            # TOML and float() accept nan and inf; a nan spend cap would compare false and never fire.
            raise ConfigError(f"{origin} must be a finite number, got {describe(value)}")
        _check_range(origin, value, rules)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{origin} must be a string, got {describe(value)}")
        choices = rules.get("choices")
        if choices and value not in choices:
            normalized = value.upper() if choices[0].isupper() else value.lower()
            if normalized in choices:
                return normalized
            raise ConfigError(f"{origin} must be one of {', '.join(choices)}, got {value!r}")
        return value
    if hint == tuple[int, ...]:
        if not isinstance(value, list | tuple) or not all(
                isinstance(item, int) and not isinstance(item, bool) for item in value):
            raise ConfigError(f"{origin} must be a list of whole numbers, got {describe(value)}")
        for item in value:
            _check_range(origin, item, rules)
        if len(set(value)) != len(value):
            raise ConfigError(f"{origin} lists a number twice: {list(value)}")
        return tuple(value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{origin} must be a list of strings, got {describe(value)}")
        items = tuple(item.strip() for item in value)
        if rules.get("non_empty") and not items:
            raise ConfigError(f"{origin} must list at least one entry")
        if any(not item for item in items):
            raise ConfigError(f"{origin} must not contain empty strings")
        pattern = rules.get("pattern")
        for item in items:
            if pattern is not None and not pattern.match(item):
                raise ConfigError(f"{origin}: {item!r} is not of the form {pattern.pattern}")
        return items
    if typing.get_origin(hint) in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{origin} must be a table of string values")
        return types.MappingProxyType(dict(value))
    raise AssertionError(f"unhandled config type {hint!r}")  # a programming error, not user input


def _parse_env_text(origin: str, hint: Any, text: str, *, secret: bool = False) -> Any:
    try:
        if hint is str:
            return text
        if hint is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(text.strip())
        if hint is float:
            return float(text.strip())
        if typing.get_origin(hint) is tuple:
            stripped = text.strip()
            if stripped.startswith("["):
                return json.loads(stripped)
            parts = [part for part in (p.strip() for p in stripped.split(",")) if part]
            return [int(part) for part in parts] if hint == tuple[int, ...] else parts
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            raise ValueError
        return parsed
    except (ValueError, RecursionError):
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(hint, "valid JSON")
        raise ConfigError(f"{origin} must be {kind}" + ("" if secret else f", got {text!r}")) from None


def _check_range(origin: str, value: float, rules: Mapping[str, Any]) -> None:
    minimum, maximum = rules.get("minimum"), rules.get("maximum")
    if minimum is not None and value < minimum:
        what = "negative" if value < 0 <= minimum else f"below {minimum}"
        raise ConfigError(f"{origin} must be at least {minimum}, got {value} ({what})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{origin} must be at most {maximum}, got {value}")


def _check_url(origin: str, value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(f"{origin} must be an http(s) URL, got {display.url(value)!r}")
    return value.rstrip("/")


def _cross_checks(where: str, config: Config, from_env: Mapping[tuple[str, str], str]) -> None:
    limits, proxy, api = config.limits, config.proxy, config.api

    def at(table: str, key: str) -> str:
        return from_env.get((table, key)) or f"{where}: [{table}] {key}"

    served: dict[str, str] = {}
    for pod in config.all_pods:
        table = f"pods.{pod.name}" if config.pods else "pod"
        _check_pod(where, table, pod, at)
        if pod.is_http:  # routed by path, never by model: its (default) model name claims nothing
            continue
        for model in (pod.model, *pod.aliases):
            if served.setdefault(model, pod.name) != pod.name:
                raise ConfigError(f"{where}: [{table}] model or alias {model!r} is also served by pod "
                                  f"{served[model]!r}: a request for it could not be routed",
                                  hint="give one of them another name (aliases), or use replicas for copies")
    # [limits] and each [pods.<name>.limits]: a per-pod override is checked like the account's own value.
    for name, pod_limits in (("limits", limits), *((f"pods.{n}.limits", lim) for n, lim in config.pod_limits.items())):
        if pod_limits.daily_cutoff:
            try:
                parse_cutoff(pod_limits.daily_cutoff)
            except ValueError as exc:
                raise ConfigError(f"{at(name, 'daily_cutoff')} {pod_limits.daily_cutoff!r} is not a time of day "
                                  f"({exc})", hint='use e.g. "00:00" or "" to disable') from None
        if pod_limits.warm_hours:
            try:
                parse_warm_hours(pod_limits.warm_hours)
            except ValueError as exc:
                raise ConfigError(f"{at(name, 'warm_hours')} {pod_limits.warm_hours!r} is not a list of windows "
                                  f"({exc})", hint='use e.g. "Mon-Fri 08:55-18:00" or "" to disable') from None
    if limits.timezone != "local":
        try:
            ZoneInfo(limits.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: an area such as "America" is a folder
            raise ConfigError(f"{at('limits', 'timezone')} {limits.timezone!r} is not an IANA time zone",
                              hint='use e.g. "Europe/Berlin", "UTC" or "local"') from None
    if proxy.use_https and not (proxy.ssl_cert and proxy.ssl_key):
        raise ConfigError(f"{at('proxy', 'use_https')} needs [proxy] ssl_cert and ssl_key")
    if "{prefix}" not in proxy.fim_template and proxy.fim_template:
        raise ConfigError(f"{at('proxy', 'fim_template')} must contain {{prefix}} (and usually {{suffix}})")
    _check_url(at("api", "base_url"), api.base_url)
    template = api.pod_url_template
    if "{pod_id}" not in template or not template.startswith(("http://", "https://")):
        raise ConfigError(f"{at('api', 'pod_url_template')} must be an http(s) URL containing {{pod_id}}, "
                          f"got {display.url(template)!r}")
    try:
        template.format(pod_id="x", port=1)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"{at('api', 'pod_url_template')} may only use {{pod_id}} and {{port}}, "
                          f"got {display.url(template)!r}") from None


_REPLICA_SUFFIX = re.compile(r"-r\d+$")
_POD_ID_RE = re.compile(r"^[a-z0-9]{6,40}$")


def _check_pod(where: str, table: str, pod: PodConfig, at: Any) -> None:
    if pod.backend != backends.POD:  # a known name whose backend this rpm does not have yet
        raise ConfigError(f"{at(table, 'backend')} {pod.backend!r} is not available yet: this rpm runs every "
                          "entry as a pod", hint=f'remove backend from [{table}], or set backend = "pod"')
    if not _NAME_RE.match(pod.name):
        raise ConfigError(f"{at(table, 'name')} must be 1-40 lowercase letters, digits or dashes, got {pod.name!r}")
    if _REPLICA_SUFFIX.search(pod.name):
        raise ConfigError(f"{at(table, 'name')} must not end in -r<number>: replicas are named so, got {pod.name!r}")
    if not pod.image and not pod.template_id and not pod.pod_id:
        raise ConfigError(f"{where}: [{table}] needs image or template_id (or pod_id, to adopt a pod)")
    if pod.volume_gb and pod.network_volume_id:
        raise ConfigError(f"{where}: [{table}] volume_gb and network_volume_id cannot both be set",
                          hint="a network volume replaces the pod volume")
    if 0 < pod.volume_gb < 10:
        raise ConfigError(f"{at(table, 'volume_gb')} must be 0 or at least 10 (RunPod's floor), "
                          f"got {pod.volume_gb}")
    if pod.pod_id and not _POD_ID_RE.match(pod.pod_id):
        raise ConfigError(f"{at(table, 'pod_id')} {pod.pod_id!r} is not a RunPod pod id "
                          "(lowercase letters and digits, as the console shows it)")
    if pod.pod_id and pod.replicas > 1:
        raise ConfigError(f"{at(table, 'replicas')} must be 1 for an adopted pod (pod_id): rpm cannot make "
                          "copies of a pod it did not create")


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a table", type(None): "null"}


def _kind_name(value: Any) -> str:
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _value_name(value: Any) -> str:
    name = _kind_name(value)
    return f"{name} ({value!r})" if type(value) in (bool, int, float, str) else name


# -------------------------------------------------------------------------------------------- templates


def render_template(config: Config | None = None) -> str:
    """The commented pod_config.toml that `rpm init` writes, generated from the declarations above."""
    config = config or Config()
    lines = [
        "# rpm configuration. Every key is optional; the values shown are the defaults.",
        "# Environment variables RPM_<TABLE>_<KEY> override single keys (e.g. RPM_LIMITS_RUNTIME_SECONDS).",
        "# The RunPod API key comes from RUNPOD_API_KEY; keep it out of this file.",
        f"version = {CONFIG_VERSION}",
    ]
    for table, cls in TABLES.items():
        lines.append("")
        lines.append(f"[{table}]")
        section = getattr(config, table)
        for spec in dataclasses.fields(cls):
            if spec.metadata.get("secret"):
                lines.append(f"# {spec.metadata['doc']}")
                lines.append(f"# {spec.name} = \"\"")
                continue
            lines.append(f"# {spec.metadata['doc']}")
            lines.append(f"{spec.name} = {_toml_value(getattr(section, spec.name))}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    import tomli_w

    if isinstance(value, Mapping):
        inner = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, tuple):
        value = list(value)
    rendered = tomli_w.dumps({"v": value})
    return rendered.split("=", 1)[1].strip()


def to_document(config: Config) -> dict[str, Any]:
    """The config as a TOML-ready dict (secrets omitted)."""
    document: dict[str, Any] = {"version": config.version}
    for table, cls in TABLES.items():
        section = getattr(config, table)
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            if spec.metadata.get("secret"):
                continue
            value = getattr(section, spec.name)
            values[spec.name] = dict(value) if isinstance(value, Mapping) else (
                list(value) if isinstance(value, tuple) else value)
        document[table] = values
    return document


# Keys of the older flat pod_config.json, mapped to (table, key). Values pass the same validation.
LEGACY_JSON_KEYS: dict[str, tuple[str, str]] = {
    "model": ("pod", "model"),
    "model_name": ("pod", "model"),
    "gpu_type_id": ("pod", "gpu_types"),
    "gpu_type_ids": ("pod", "gpu_types"),
    "gpu_types": ("pod", "gpu_types"),
    "gpu_count": ("pod", "gpu_count"),
    "cloud_type": ("pod", "cloud"),
    "template_id": ("pod", "template_id"),
    "image": ("pod", "image"),
    "image_name": ("pod", "image"),
    "container_disk_in_gb": ("pod", "container_disk_gb"),
    "container_disk_gb": ("pod", "container_disk_gb"),
    "volume_in_gb": ("pod", "volume_gb"),
    "volume_gb": ("pod", "volume_gb"),
    "volume_mount_path": ("pod", "volume_mount_path"),
    "network_volume_id": ("pod", "network_volume_id"),
    "port": ("pod", "port"),
    "vllm_port": ("pod", "port"),
    "env": ("pod", "env"),
    "data_center_ids": ("pod", "data_centers"),
    "data_centers": ("pod", "data_centers"),
    "max_price_per_hour": ("pod", "max_price_per_hour"),
    "runtime_seconds": ("limits", "runtime_seconds"),
    "max_runtime_seconds": ("limits", "runtime_seconds"),
    "daily_cutoff": ("limits", "daily_cutoff"),
    "timezone": ("limits", "timezone"),
    "idle_timeout_seconds": ("limits", "idle_timeout_seconds"),
    "idle_action": ("limits", "idle_action"),
    "max_daily_spend": ("limits", "max_daily_spend_usd"),
    "initial_wait_seconds": ("startup", "initial_wait_seconds"),
    "poll_interval_seconds": ("startup", "poll_interval_seconds"),
    "max_startup_attempts": ("startup", "max_startup_attempts"),
    "ready_timeout_seconds": ("startup", "ready_timeout_seconds"),
    "proxy_host": ("proxy", "host"),
    "proxy_port": ("proxy", "port"),
    "use_https": ("proxy", "use_https"),
    "ssl_cert": ("proxy", "ssl_cert"),
    "ssl_key": ("proxy", "ssl_key"),
    "api_keys": ("proxy", "api_keys"),
    "max_queue_size": ("proxy", "max_queue_size"),
    "max_retries": ("proxy", "max_retries"),
    "retry_delay": ("proxy", "retry_delay_seconds"),
    "enable_profiling": ("proxy", "enable_profiling"),
    "cache_dir": ("cache", "dir"),
    "max_cache_size": ("cache", "max_entries"),
    "max_cache_bytes": ("cache", "max_bytes"),
    "cache_ttl_seconds": ("cache", "ttl_seconds"),
    "api_base_url": ("api", "base_url"),
    "pod_url_template": ("api", "pod_url_template"),
}
# Legacy keys that carried secrets or are superseded; reported, not copied.
LEGACY_DROPPED = {"api_key", "runpod_api_key"}


def convert_legacy_json(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Read an older flat pod_config.json; return (TOML document, notes about dropped keys)."""
    try:
        legacy = json.loads(read_regular_file(path, max_bytes=MAX_CONFIG_BYTES).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(legacy, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    document: dict[str, Any] = {"version": CONFIG_VERSION}
    notes: list[str] = []
    for key, value in legacy.items():
        if key in LEGACY_DROPPED:
            notes.append(f"'{key}' was not copied: set RUNPOD_API_KEY instead")
            continue
        if key not in LEGACY_JSON_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'{_did_you_mean(key, list(LEGACY_JSON_KEYS))}")
        table, new_key = LEGACY_JSON_KEYS[key]
        if new_key == "gpu_types" and isinstance(value, str):
            value = [value]
        if new_key == "data_centers" and isinstance(value, str):
            value = [value]
        if new_key == "cloud" and value == "ALL":
            notes.append("cloud_type ALL has no REST v2 equivalent; using SECURE")
            value = "SECURE"
        if new_key == "env" and isinstance(value, list):
            value = dict(str(item).split("=", 1) for item in value if "=" in str(item))
        if new_key in ("retry_delay_seconds", "max_price_per_hour", "max_daily_spend_usd") and isinstance(
                value, int):
            value = float(value)
        document.setdefault(table, {})[new_key] = value
    # Validate with the same rules, naming the JSON file. Its mode is not held against it: the converted
    # file is written 0600, and the note below says what to do with the old one.
    build_config(document, source=path, env={}, check_file_mode=False)
    if _holds_secret(PodConfig, document.get("pod", {})) and path.stat().st_mode & 0o077:
        notes.append(f"{path.name} holds tokens in env and others can read it: delete it or chmod 600 it")
    return document, notes


PODS_EXAMPLE = """\
# rpm configuration with several pods: one [pods.<name>] table per pod, each with the keys of a single
# [pod] table (see `rpm init` for every key with its explanation). The proxy routes each request by its
# `model` to the pod that serves it; each pod wakes, idles and obeys its limits on its own.
version = 1

# Limits for every pod; [pods.<name>.limits] overrides them key by key for one pod. max_daily_spend_usd
# here is the account's cap: all pods together never spend more than this in a day.
[limits]
max_daily_spend_usd = 20.0
idle_timeout_seconds = 900
daily_cutoff = "00:00"
timezone = "local"

# A chat model on a larger GPU. `replicas = 2` lets rpm wake a second copy when requests queue up.
[pods.chat]
model = "Qwen/Qwen2.5-7B-Instruct"
gpu_types = ["NVIDIA L40S", "NVIDIA RTX A6000"]
replicas = 1

[pods.chat.limits]
max_daily_spend_usd = 12.0       # this pod's own cap, below the account's
idle_timeout_seconds = 1800

# A small model for autocomplete; editors may also ask for it as "autocomplete".
[pods.coder]
model = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
gpu_types = ["NVIDIA GeForce RTX 4090"]
aliases = ["autocomplete"]

# A pod you made yourself in the RunPod console (with a network volume full of weights): rpm resumes and
# stops it, never creates or terminates it. Uncomment and put its id.
# [pods.mine]
# pod_id = "abc123xyz9"
# model = "my-org/my-model"
"""


def write_config(path: Path, *, force: bool = False, from_json: Path | None = None,
                 pods: bool = False) -> tuple[Path, list[str]]:
    """`rpm init`: write the commented template (`pods`: the commented multi-pod example), or the converted
    legacy JSON. Never overwrites without force."""
    import tomli_w

    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", hint="pass --force to overwrite it")
    notes: list[str] = []
    if pods:
        text = PODS_EXAMPLE
    elif from_json is not None:
        document, notes = convert_legacy_json(from_json)
        text = (f"# Converted from {from_json.name} by `rpm init --from`. Keys not listed take their defaults;\n"
                f"# run `rpm init --path example.toml` to see every key with its explanation.\n"
                + tomli_w.dumps(document))
    else:
        text = render_template()
    try:
        make_dirs(path.parent)  # the missing ones 0700; existing ones are the user's and left alone
        write_private_file(path, text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror})") from None
    return path, notes
