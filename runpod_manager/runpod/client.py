"""RunPod REST v2 client: auth, timeouts, retries, and RFC 9457 problem bodies mapped to typed errors.

One `requests.Session` per client. Every call goes to `<base_url>/v2/...` with a Bearer key.

Retry policy (why each call may or may not be repeated):
- GET and DELETE are idempotent, so 429, 5xx (500/502/503/504 and Cloudflare's 520–524, which front
  api.runpod.io), timeouts and connection errors are retried with exponential backoff and full jitter.
- Pod actions (start/stop/restart) and PATCH updates are retried the same way: a repeated stop or start
  converges on the same state, and a PATCH carries absolute values. If an action's retry gets 409 after
  an attempt that may have reached RunPod (a 5xx or a lost response), the first attempt most likely
  took effect, so the pod is read again and returned when it is already where the action leads.
- `create_pod` is never re-sent after a 5xx, timeout or connection error: RunPod has answered 500 to a
  create that it went on to run and bill (transformerlab PR #2305). The client looks the pod up by name
  instead and returns it when found; otherwise it raises ApiUnavailable and the caller decides. A 429
  is re-sent, because a rate-limited request was not processed.
- A `Retry-After` header (integer seconds) is honoured; one longer than `max_retry_after_seconds` (a day
  window, say) stops retrying at once with RateLimited rather than blocking the command.
- A 5xx whose detail is a known business answer (no capacity, host GPU taken, low balance — REST v1
  sent those as 500) is not transient and is never retried.

Secrets: the key lives only in the session's auth hook. Errors are raised outside `except` blocks, so
no requests exception (which holds the prepared request and its headers) is chained to them, and any
text RunPod echoes back is scrubbed of the key. Logs carry method, path, status and elapsed time only.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import requests
import urllib3
from requests.auth import AuthBase

from runpod_manager import __version__, display
from runpod_manager.errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    ConfigError,
    Conflict,
    InsufficientBalance,
    InvalidRequest,
    NoCapacity,
    NotFound,
    RateLimited,
    ResumeRefused,
)
from runpod_manager.runpod.models import CLOUDS, BillingRecord, GpuType, Pod, PodSpec, PodStatus

__all__ = ["DEFAULT_BASE_URL", "RunPodClient", "normalise_base_url"]

log = logging.getLogger("runpod_manager.runpod")

DEFAULT_BASE_URL: Final = "https://api.runpod.io"
_TRANSIENT_STATUSES: Final = frozenset({500, 502, 503, 504, 520, 521, 522, 523, 524})
_TOO_MANY_REQUESTS: Final = 429
_MAX_DETAIL_CHARS: Final = 300
_MAX_LOG_TAIL: Final = 5000  # the spec's maximum for `tail`

# RunPod's business failures carry no machine-readable code, only these sentences (runpod-api.md §6).
_NO_CAPACITY_TEXTS: Final = (
    "no longer any instances available",
    "no instances available",
    "does not have the resources to deploy",
)
_RESUME_REFUSED_TEXTS: Final = ("not enough free gpus on the host machine",)
_LOW_BALANCE_TEXTS: Final = ("balance is too low",)

# Where a repeated action has already led when a retry answers 409 (see the module docstring).
_ACTION_OUTCOMES: Final[Mapping[str, frozenset[PodStatus]]] = {
    "start": frozenset({PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING}),
    "stop": frozenset({PodStatus.EXITED}),
    "restart": frozenset({PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING}),
}

_UNSET: Final = object()


def normalise_base_url(base_url: str) -> str:
    """`https://api.runpod.io`, `.../`, `.../v2` and `.../v2/` all mean the same server root."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/v2"):
        url = url[: -len("/v2")].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"RunPod API base URL {display.url(url)!r} is not an http(s) URL like {DEFAULT_BASE_URL}"
        )
    return url


class _BearerAuth(AuthBase):
    """Adds the Bearer header at send time. Holding the key here (not in session.headers) keeps it out
    of reprs, and a session-level auth stops requests from overriding it with a ~/.netrc entry."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<redacted>)"

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "***")


@dataclass(frozen=True)
class _TransportFailure:
    description: str  # short and user-readable: "timed out after 30 s", "connection refused"
    maybe_sent: bool  # False only when the request provably never left (connect timeout)


@dataclass
class _Exchange:
    """The outcome of one call after retries: the last response, or the last transport failure."""

    response: requests.Response | None
    failure: _TransportFailure | None
    attempts: int
    # An earlier attempt (not the last) failed in a way that may have reached RunPod and taken effect.
    maybe_applied: bool

    @property
    def ok(self) -> bool:
        return self.response is not None and 200 <= self.response.status_code < 300

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status_code


@dataclass(frozen=True)
class _Problem:
    detail: str | None
    field_errors: tuple[str, ...]


class RunPodClient:
    """Synchronous RunPod REST v2 client. `calls` counts HTTP requests attempted (retries included)."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 30.0,
        max_retries: int = 4,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 20.0,
        max_retry_after_seconds: float = 60.0,
        log_idle_timeout_seconds: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = f"rpm/{__version__}",
    ) -> None:
        key = api_key.strip() if isinstance(api_key, str) else ""
        if not key:
            raise AuthError(
                "No RunPod API key: RUNPOD_API_KEY is empty or not set",
                hint="create a key with Pods read/write in the RunPod console (Settings → API Keys) "
                "and export RUNPOD_API_KEY",
            )
        if not key.isascii() or not key.isprintable() or any(char.isspace() for char in key):
            # requests would otherwise fail with an InvalidHeader message that quotes the key.
            raise AuthError(
                "RUNPOD_API_KEY contains spaces, control or non-ASCII characters, so it is not a RunPod key",
                hint="copy the key from the RunPod console again",
            )
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries}")
        self.base_url = normalise_base_url(base_url)
        self._host = display.url(self.base_url).split("://", 1)[1].split("/", 1)[0]
        self._timeout = (connect_timeout_seconds, read_timeout_seconds)
        self._max_retries = max_retries
        self._backoff_base_seconds = backoff_base_seconds
        self._backoff_max_seconds = backoff_max_seconds
        self._max_retry_after_seconds = max_retry_after_seconds
        self._log_idle_timeout_seconds = log_idle_timeout_seconds
        self._sleep = sleep
        self._random = random.Random()
        self._auth = _BearerAuth(key)
        self._session = requests.Session()
        self._session.auth = self._auth
        # trust_env stays on so HTTPS_PROXY/NO_PROXY and REQUESTS_CA_BUNDLE keep working behind corporate
        # proxies; the session-level auth above means ~/.netrc is never consulted for our header.
        self._session.trust_env = True
        self._session.headers.update(
            {"User-Agent": user_agent, "Accept": "application/json, application/problem+json"}
        )
        self.calls = 0

    def __repr__(self) -> str:
        return f"RunPodClient(base_url={display.url(self.base_url)!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RunPodClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- pods ---------------------------------------------------------------------------------

    def create_pod(self, spec: PodSpec) -> Pod:
        """POST /v2/pods. Never creates twice: see the module docstring for what happens on a 5xx."""
        what = f"create pod '{spec.name}'"
        exchange = self._exchange("POST", "/v2/pods", body=spec.to_api(), retry_transient=False)
        if exchange.ok:
            return Pod.from_api(self._json(exchange, what))
        if exchange.response is None or self._classify(exchange) is ApiUnavailable:
            return self._recover_failed_create(spec, exchange, what)
        raise self._error(exchange, what)

    def list_pods(self) -> list[Pod]:
        """GET /v2/pods: every pod of the account (cluster members excluded, as RunPod does)."""
        what = "list pods"
        data = self._get_json("/v2/pods", what)
        # v2 wraps the list ({"pods": [...]}); a bare list (v1 style) is accepted from older emulators.
        pods = data.get("pods") if isinstance(data, dict) else data
        if not isinstance(pods, list):
            raise ApiError("RunPod returned a pod list without 'pods'")
        return [Pod.from_api(pod) for pod in pods]

    def find_pods_by_name(self, name: str) -> list[Pod]:
        """Pods whose name is exactly `name` (the API has no name filter, so this lists them all)."""
        return [pod for pod in self.list_pods() if pod.name == name]

    def list_pods_with_prefix(self, prefix: str) -> list[Pod]:
        """Pods whose name starts with `prefix` (rpm's own pods start with `rpm-`)."""
        return [pod for pod in self.list_pods() if pod.name.startswith(prefix)]

    def get_pod(self, pod_id: str) -> Pod:
        """GET /v2/pods/{id}; NotFound when RunPod has no such pod."""
        what = f"get pod {pod_id}"
        return Pod.from_api(self._get_json(_pod_path(pod_id), what))

    def start_pod(self, pod_id: str) -> Pod:
        """Start (resume) a stopped pod. ResumeRefused when its host's GPU was rented meanwhile."""
        return self._pod_action(pod_id, "start")

    def stop_pod(self, pod_id: str) -> Pod:
        """Stop a pod: the GPU is released, the volume is kept (and still billed)."""
        return self._pod_action(pod_id, "stop")

    def update_pod(
        self,
        pod_id: str,
        *,
        name: str | None = None,
        image: str | None = None,
        args: str | None = None,
        env: Mapping[str, str] | None = None,
        ports: tuple[str, ...] | None = None,
    ) -> Pod:
        """PATCH /v2/pods/{id}: change only the fields given. RunPod resets the container to apply them.

        `env`, when given, replaces the pod's whole environment (PATCH semantics). Retried like the
        actions: the body holds absolute values, so a repeated PATCH converges on the same pod (at
        worst the container is reset once more).
        """
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if image is not None:
            changes["image"] = image
        if args is not None:
            changes["args"] = args
        if env is not None:
            changes["env"] = dict(env)
        if ports is not None:
            changes["ports"] = list(ports)
        if not changes:
            raise ValueError("update_pod needs at least one field to change")
        what = f"update pod {pod_id}"
        exchange = self._exchange("PATCH", _pod_path(pod_id), body=changes)
        if not exchange.ok:
            raise self._error(exchange, what)
        data = self._json(exchange, what, allow_empty=True)
        return self.get_pod(pod_id) if data is _UNSET else Pod.from_api(data)

    def terminate_pod(self, pod_id: str) -> bool:
        """DELETE /v2/pods/{id}. True when this call removed the pod, False when it was already gone."""
        what = f"terminate pod {pod_id}"
        exchange = self._exchange("DELETE", _pod_path(pod_id))
        if exchange.ok:
            return True
        if exchange.status == 404:
            # A 404 after an attempt that may have gone through means that attempt deleted it.
            return exchange.maybe_applied
        raise self._error(exchange, what)

    def pod_logs(self, pod_id: str, tail: int = 100) -> list[str]:
        """The last `tail` log lines of a pod (GET /v2/pods/{id}/logs, Server-Sent Events).

        The endpoint backfills `tail` lines and then streams live, so reading stops at `tail` lines or
        when no line arrives for `log_idle_timeout_seconds` (the backfill is over).
        """
        if not 1 <= tail <= _MAX_LOG_TAIL:
            raise ValueError(f"tail must be between 1 and {_MAX_LOG_TAIL}, not {tail}")
        what = f"read the logs of pod {pod_id}"
        exchange = self._exchange(
            "GET",
            f"{_pod_path(pod_id)}/logs",
            params={"tail": tail},
            stream=True,
            read_timeout_seconds=self._log_idle_timeout_seconds,
            accept="text/event-stream",
        )
        if not exchange.ok or exchange.response is None:
            raise self._error(exchange, what)
        response = exchange.response
        lines: list[str] = []
        try:
            for line in _sse_data_lines(response):
                lines.append(line)
                if len(lines) >= tail:
                    break
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            # A read timeout mid-stream means the backfill is over and nothing new arrived.
            pass
        finally:
            response.close()
        return lines[-tail:]

    # --- catalog and billing ------------------------------------------------------------------

    def list_gpu_types(
        self, *, gpu_count: int = 1, cloud: str = "SECURE", include_availability: bool = True
    ) -> list[GpuType]:
        """GET /v2/catalog/gpus, with pod stock for `gpu_count` GPUs in `cloud` when asked."""
        if gpu_count < 1:
            raise ValueError(f"gpu_count must be at least 1, not {gpu_count}")
        if cloud not in CLOUDS:
            raise ValueError(f"cloud must be SECURE or COMMUNITY, not {cloud!r}")
        # product/count/cloud are valid only together with include=AVAILABILITY (a 400 otherwise).
        params: dict[str, str | int] = (
            {"include": "AVAILABILITY", "product": "POD", "count": gpu_count, "cloud": cloud}
            if include_availability
            else {}
        )
        data = self._get_json("/v2/catalog/gpus", "read the GPU catalog", params=params)
        gpus = data.get("gpus") if isinstance(data, dict) else None
        if not isinstance(gpus, list):
            raise ApiError("RunPod returned a GPU catalog without 'gpus'")
        return [GpuType.from_api(gpu) for gpu in gpus]

    def pod_billing(self, pod_id: str, *, since: datetime) -> list[BillingRecord]:
        """GET /v2/billing/pods for one pod in day buckets from `since` (snapped down to midnight UTC)."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        if not pod_id:
            raise ValueError("pod_id is empty")
        params = {
            "podId": pod_id,
            "bucketSize": "day",
            "startTime": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        data = self._get_json("/v2/billing/pods", f"read billing for pod {pod_id}", params=params)
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise ApiError("RunPod returned pod billing without 'records'")
        return [BillingRecord.from_api(record) for record in records]

    def billing_by_pod(self, *, since: datetime, until: datetime | None = None,
                       bucket_size: str = "hour") -> list[BillingRecord]:
        """GET /v2/billing/pods for every pod of the account, one record per pod per bucket (`rpm report`:
        one call for any number of pods). RunPod snaps the window to whole buckets."""
        if since.tzinfo is None or (until is not None and until.tzinfo is None):
            raise ValueError("since and until must be timezone-aware")
        params = {"bucketSize": bucket_size, "startTime": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if until is not None:
            params["endTime"] = until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = self._get_json("/v2/billing/pods", "read pod billing", params=params)
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise ApiError("RunPod returned pod billing without 'records'")
        return [BillingRecord.from_api(record) for record in records]

    def pod_spend_usd(self, pod_id: str, *, since: datetime) -> float:
        """USD billed for `pod_id` since `since`, as RunPod reports it.

        RunPod snaps the window to whole day buckets, so a bucket straddling `since` counts in full:
        the figure may over-count, never under-count, which is the safe side for a spend cap.
        """
        records = self.pod_billing(pod_id, since=since)
        # Records for another pod would mean the filter was ignored; never bill them to this one.
        return sum(record.total_amount_usd for record in records if record.pod_id in (None, pod_id))

    # --- internals: the calls -----------------------------------------------------------------

    def _pod_action(self, pod_id: str, action: str) -> Pod:
        what = f"{action} pod {pod_id}"
        exchange = self._exchange("POST", f"{_pod_path(pod_id)}/action", body={"action": action})
        if exchange.ok:
            data = self._json(exchange, what, allow_empty=True)
            # v2 returns the updated pod; tolerate an empty 200/204 (v1 documented no body) by reading it.
            return self.get_pod(pod_id) if data is _UNSET else Pod.from_api(data)
        if exchange.status == 409 and exchange.maybe_applied:
            pod = self.get_pod(pod_id)
            if pod.status in _ACTION_OUTCOMES[action]:
                log.debug("%s pod %s: retry got 409, pod already %s", action, pod_id, pod.status)
                return pod
        raise self._error(exchange, what)

    def _recover_failed_create(self, spec: PodSpec, exchange: _Exchange, what: str) -> Pod:
        failure = self._failure_text(exchange)
        log.debug("create pod %s failed (%s); looking it up by name before anything else", spec.name, failure)
        lookup_error: ApiError | None = None
        found: list[Pod] = []
        try:
            found = self.find_pods_by_name(spec.name)
        except AuthError:
            raise
        except ApiError as error:
            lookup_error = error
        if lookup_error is not None:
            raise ApiUnavailable(
                f"RunPod failed to {what} ({failure}) and the lookup by name failed too "
                f"({lookup_error.message}); the pod may exist",
                status=exchange.status,
                hint="rpm looks for it by name before creating another; try again in a minute",
            )
        if found:
            # Names carry a random suffix, so more than one means an earlier run; the newest is ours.
            newest = max(found, key=lambda pod: pod.created_at or datetime.min.replace(tzinfo=UTC))
            log.debug("create pod %s: RunPod created it despite the failure (pod %s)", spec.name, newest.id)
            return newest
        problem = self._problem(exchange.response) if exchange.response is not None else None
        raise ApiUnavailable(
            f"RunPod API at {self._host} failed to {what} ({failure}) and no pod of that name exists",
            status=exchange.status,
            detail=problem.detail if problem else None,
            hint="nothing was created twice; a late pod would be found by name before creating another — "
            "try again in a minute and check https://uptime.runpod.io",
        )

    def _get_json(self, path: str, what: str, *, params: Mapping[str, str | int] | None = None) -> Any:
        exchange = self._exchange("GET", path, params=params)
        if not exchange.ok:
            raise self._error(exchange, what)
        return self._json(exchange, what)

    def _json(self, exchange: _Exchange, what: str, *, allow_empty: bool = False) -> Any:
        assert exchange.response is not None  # noqa: S101 -- callers check `ok` first
        text = exchange.response.text
        if not text.strip():
            if allow_empty:
                return _UNSET
            raise ApiError(f"RunPod answered with an empty body when asked to {what}")
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
        raise ApiError(f"RunPod answered with a body that is not JSON when asked to {what}")

    # --- internals: sending and retrying ------------------------------------------------------

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
        retry_transient: bool = True,
        stream: bool = False,
        read_timeout_seconds: float | None = None,
        accept: str | None = None,
    ) -> _Exchange:
        """Send with retries. Returns the last response (any status) or the last transport failure."""
        max_attempts = 1 + self._max_retries
        maybe_applied = False
        attempt = 0
        while True:
            attempt += 1
            response, failure = self._send_once(
                method,
                path,
                params=params,
                body=body,
                stream=stream,
                read_timeout_seconds=read_timeout_seconds,
                accept=accept,
            )
            exchange = _Exchange(response, failure, attempt, maybe_applied)
            delay = self._retry_delay(exchange, attempt, retry_transient)
            if delay is None or attempt >= max_attempts:
                return exchange
            if response is not None:
                maybe_applied = maybe_applied or response.status_code >= 500
                response.close()
            elif failure is not None:
                maybe_applied = maybe_applied or failure.maybe_sent
            log.debug(
                "%s %s: retrying in %.2f s (attempt %d of %d)", method, path, delay, attempt + 1, max_attempts
            )
            self._sleep(delay)

    def _retry_delay(self, exchange: _Exchange, attempt: int, retry_transient: bool) -> float | None:
        """Seconds to wait before the next attempt, or None when this outcome must not be retried."""
        response = exchange.response
        if response is None:
            return self._backoff(attempt) if retry_transient else None
        status = response.status_code
        if status != _TOO_MANY_REQUESTS and (not retry_transient or status not in _TRANSIENT_STATUSES):
            return None
        if self._classify(exchange) not in (RateLimited, ApiUnavailable):
            return None  # a business answer dressed as a 5xx (no capacity, low balance…)
        retry_after = _retry_after_seconds(response)
        if retry_after is None:
            return self._backoff(attempt)
        if retry_after > self._max_retry_after_seconds:
            return None  # waiting that long would stall the command; report it instead
        # A little jitter on top so several rpm processes (proxy, cron) do not retry in lockstep.
        return retry_after + self._random.uniform(0, self._backoff_base_seconds)

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with full jitter (AWS architecture blog): uniform over [0, cap].
        ceiling = min(self._backoff_max_seconds, self._backoff_base_seconds * 2 ** (attempt - 1))
        return self._random.uniform(0, ceiling)

    def _send_once(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None,
        body: Mapping[str, Any] | None,
        stream: bool,
        read_timeout_seconds: float | None,
        accept: str | None,
    ) -> tuple[requests.Response | None, _TransportFailure | None]:
        self.calls += 1
        read_timeout = self._timeout[1] if read_timeout_seconds is None else read_timeout_seconds
        started = time.monotonic()
        failure: _TransportFailure | None = None
        response: requests.Response | None = None
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                params=params,
                json=body,
                timeout=(self._timeout[0], read_timeout),
                stream=stream,
                headers={"Accept": accept} if accept else None,
            )
        except requests.RequestException as error:
            # Only a short description leaves this block: the exception holds the prepared request
            # (headers included), so it must not become the __context__ of anything we raise.
            failure = _describe_transport_error(error, read_timeout)
        elapsed = time.monotonic() - started
        if response is not None:
            log.debug("%s %s -> %d in %.3f s", method, path, response.status_code, elapsed)
        else:
            log.debug(
                "%s %s -> failed (%s) in %.3f s",
                method,
                path,
                failure.description if failure else "?",
                elapsed,
            )
        return response, failure

    # --- internals: errors --------------------------------------------------------------------

    def _problem(self, response: requests.Response) -> _Problem:
        problem = _parse_problem(response)
        detail = self._auth.redact(problem.detail) if problem.detail else None
        return _Problem(detail, tuple(self._auth.redact(error) for error in problem.field_errors))

    def _classify(self, exchange: _Exchange) -> type[ApiError]:
        if exchange.response is None:
            return ApiUnavailable
        status = exchange.response.status_code
        detail = (self._problem(exchange.response).detail or "").lower()
        if status in (401, 403):
            return AuthError
        # v1 sent these as 500 and v2 as 400/402: the sentence decides, not the status.
        if status in (400, 402) or status >= 500:
            if status == 402 or any(text in detail for text in _LOW_BALANCE_TEXTS):
                return InsufficientBalance
            if any(text in detail for text in _RESUME_REFUSED_TEXTS):
                return ResumeRefused
            if any(text in detail for text in _NO_CAPACITY_TEXTS):
                return NoCapacity
        if status >= 500:
            return ApiUnavailable
        return {
            400: InvalidRequest,
            404: NotFound,
            409: Conflict,
            422: InvalidRequest,
            _TOO_MANY_REQUESTS: RateLimited,
        }.get(status, ApiError)

    def _failure_text(self, exchange: _Exchange) -> str:
        if exchange.response is None:
            return exchange.failure.description if exchange.failure else "no response"
        detail = self._problem(exchange.response).detail
        status = exchange.response.status_code
        return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"

    def _error(self, exchange: _Exchange, what: str) -> ApiError:
        """The user-facing error for a failed call; `what` is a verb phrase ("stop pod abc123")."""
        kind = self._classify(exchange)
        failure = self._failure_text(exchange)
        tries = f" after {exchange.attempts} attempts" if exchange.attempts > 1 else ""
        if exchange.response is None:
            return ApiUnavailable(
                f"RunPod API at {self._host} is unreachable: could not {what} ({failure}){tries}",
                hint="check your network connection and https://uptime.runpod.io, then try again",
            )
        status = exchange.response.status_code
        problem = self._problem(exchange.response)
        fields: dict[str, Any] = {"status": status, "detail": problem.detail}
        if kind is AuthError and status == 401:
            return AuthError(
                f"RunPod rejected the API key trying to {what} ({failure})",
                hint="the key is missing or invalid: check RUNPOD_API_KEY",
                **fields,
            )
        if kind is AuthError:
            return AuthError(
                f"RunPod denied permission to {what} ({failure})",
                hint="the API key lacks permission (Read Only and Restricted keys cannot manage pods): "
                "set RUNPOD_API_KEY to a key with Pods read/write",
                **fields,
            )
        if kind is InsufficientBalance:
            return InsufficientBalance(
                f"RunPod refused to {what}: the account balance is too low ({failure})",
                hint="add funds in the RunPod console (Billing), then try again",
                **fields,
            )
        if kind is ResumeRefused:
            return ResumeRefused(
                f"RunPod could not {what}: its host machine's GPU was rented meanwhile ({failure})",
                hint="terminate the pod and create a new one, or try again later",
                **fields,
            )
        if kind is NoCapacity:
            return NoCapacity(
                f"RunPod has no capacity to {what} right now ({failure})",
                hint="try another GPU type, data center or cloud, or try again later",
                **fields,
            )
        if kind is NotFound:
            return NotFound(f"RunPod could not {what}: it does not exist ({failure})", **fields)
        if kind is Conflict:
            return Conflict(
                f"RunPod refused to {what} in the pod's current status ({failure})",
                hint="check the pod's status and try again",
                **fields,
            )
        if kind is InvalidRequest:
            listed = "; ".join(problem.field_errors[:5])
            return InvalidRequest(
                f"RunPod rejected the request to {what} ({failure}{'; ' + listed if listed else ''})",
                hint="check the pod settings in pod_config.toml",
                field_errors=problem.field_errors,
                **fields,
            )
        if kind is RateLimited:
            retry_after = _retry_after_seconds(exchange.response)
            wait = f"{retry_after:g} s" if retry_after else "a minute"
            return RateLimited(
                f"RunPod rate limit reached: could not {what} ({failure}){tries}",
                retry_after_seconds=retry_after,
                hint=f"wait {wait} and try again",
                **fields,
            )
        if kind is ApiUnavailable:
            return ApiUnavailable(
                f"RunPod API at {self._host} is failing: could not {what} ({failure}){tries}",
                hint="RunPod may be having trouble: check https://uptime.runpod.io and try again later",
                **fields,
            )
        return ApiError(f"RunPod answered HTTP {status} when asked to {what} ({failure})", **fields)


# --- module helpers ---------------------------------------------------------------------------


def _pod_path(pod_id: str) -> str:
    if not pod_id:
        raise ValueError("pod_id is empty")
    return f"/v2/pods/{quote(pod_id, safe='')}"


def _retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After as seconds; v2 sends integers. An HTTP-date (or garbage) falls back to backoff."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _parse_problem(response: requests.Response) -> _Problem:
    """The detail and field errors of an error body: RFC 9457, v1 `{error}`/`{message}`, or text."""
    try:
        text = response.text
    except requests.RequestException:
        return _Problem(None, ())
    if not text.strip():
        return _Problem(None, ())
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = _UNSET
    if isinstance(body, dict):
        detail = None
        for key in ("detail", "error", "message", "title"):
            value = body.get(key)
            if isinstance(value, dict):  # {"error": {"message": "..."}}
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                detail = value
                break
        errors = body.get("errors")
        field_errors = tuple(_one_line(str(error)) for error in errors) if isinstance(errors, list) else ()
        return _Problem(_one_line(detail) if detail else None, field_errors)
    if body is _UNSET and text.lstrip().startswith("<"):
        return _Problem(None, ())  # an HTML error page (Cloudflare) says nothing a user can act on
    return _Problem(_one_line(text), ())


def _one_line(text: str) -> str:
    # v1 repeated the capacity sentence once per flavour, joined by newlines: keep each line once.
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if line.strip():
            seen.setdefault(" ".join(line.split()), None)
    joined = " ".join(seen)
    return joined if len(joined) <= _MAX_DETAIL_CHARS else joined[: _MAX_DETAIL_CHARS - 1] + "…"


def _describe_transport_error(
    error: requests.RequestException, read_timeout_seconds: float
) -> _TransportFailure:
    if isinstance(error, requests.ConnectTimeout):
        return _TransportFailure("connection timed out", maybe_sent=False)
    if isinstance(error, requests.Timeout):
        return _TransportFailure(f"no answer within {read_timeout_seconds:g} s", maybe_sent=True)
    if isinstance(error, requests.exceptions.SSLError):
        return _TransportFailure("TLS handshake failed", maybe_sent=False)
    if isinstance(error, requests.exceptions.ProxyError):
        return _TransportFailure("the HTTPS proxy failed", maybe_sent=True)
    if isinstance(error, requests.ConnectionError):
        return _TransportFailure(_connection_reason(str(error)), maybe_sent=True)
    return _TransportFailure(f"request failed ({type(error).__name__})", maybe_sent=True)


def _connection_reason(text: str) -> str:
    lowered = text.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("failed to resolve", "host name not found"),
        ("temporary failure in name resolution", "host name not found"),
        ("network is unreachable", "network unreachable"),
        ("connection reset", "connection reset"),
        ("remotedisconnected", "connection closed without an answer"),
        ("connection aborted", "connection closed without an answer"),
    ):
        if needle in lowered:
            return reason
    return "connection failed"


def _sse_data_lines(response: requests.Response) -> Iterator[str]:
    """The `line` of each SSE `data:` payload ({"source", "line", "ts"}); raw text when not JSON."""
    for raw in _raw_lines(response):
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):
            yield payload
            continue
        if isinstance(event, dict) and isinstance(event.get("line"), str):
            yield event["line"]
        elif isinstance(event, str):
            yield event


def _raw_lines(response: requests.Response) -> Iterator[bytes]:
    """Lines as soon as they arrive. `iter_lines` reads fixed-size blocks and would lose a short
    backfill to the idle timeout; urllib3 2's `read1` returns whatever has arrived instead."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is not None:
        chunks: Iterator[bytes] = iter(lambda: read1(65536, decode_content=True) or b"", b"")
    else:  # urllib3 1.x: byte by byte is slow but log backfills are small
        chunks = response.iter_content(chunk_size=1)
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending
