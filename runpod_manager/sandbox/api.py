"""RunPod REST v2 endpoints of the emulator, the `/_sandbox/` control endpoints, and the HTTP plumbing.

Every v2 answer is shaped like the official spec: Pod objects with all required fields, RFC 9457 problem
bodies (`application/problem+json`) for every error including unknown routes (404) and wrong methods
(405 with `Allow`), `RateLimit`/`RateLimit-Policy` headers on every authenticated response, 429 with an
integer `Retry-After`. A middleware turns any unexpected exception into a 500 problem without internals,
so the emulator never crashes and never sends a traceback.

The control endpoints (not part of v2) let tests and demos steer the world: faults, reset, platform
stops, a taken host, stock and balance. They need the account key, the same `Authorization: Bearer` as
/v2 (a pod-scoped key is not enough): `/_sandbox/state` returns every pod's key, and the emulator may
listen beyond loopback. The fake pod URLs (`/pods/...`, the model servers) check the pod's own key; the
fake generic service of a non-vLLM pod (service.py) checks none, like a public RunPod pod URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from runpod_manager.sandbox.billing import bucket_ceil, bucket_floor, bucket_next, rfc3339
from runpod_manager.sandbox.containers import ContainerRunner
from runpod_manager.sandbox.errors import WorldError
from runpod_manager.sandbox.model import ModelServer
from runpod_manager.sandbox.service import PROGRESS_SECONDS, ServiceServer
from runpod_manager.sandbox.validate import (
    VALIDATION_DETAIL,
    RequestInvalidError,
    parse_billing_query,
    parse_bool_param,
    parse_catalog_query,
    parse_json,
    parse_log_query,
    validate_create_pod,
    validate_pod_action,
    validate_update_pod,
)
from runpod_manager.sandbox.world import World

log = logging.getLogger("runpod_manager.sandbox")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 1024 * 1024
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024  # read (and drop) this much of an oversized body so the 413 arrives

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Entity",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}

# (method, route) → the spec's operationId; also the key of the per-operation call counters.
OPERATIONS = {
    ("GET", "/v2/pods"): "listPods",
    ("POST", "/v2/pods"): "createPod",
    ("GET", "/v2/pods/{id}"): "getPod",
    ("PATCH", "/v2/pods/{id}"): "updatePod",
    ("DELETE", "/v2/pods/{id}"): "deletePod",
    ("POST", "/v2/pods/{id}/action"): "podAction",
    ("GET", "/v2/pods/{id}/logs"): "getPodLogs",
    ("GET", "/v2/catalog/gpus"): "listGpuTypes",
    ("GET", "/v2/billing/pods"): "listPodBilling",
}
# What a pod-scoped key may do: read, act on and delete its own pod, nothing else.
_POD_KEY_OPERATIONS = frozenset({"getPod", "podAction", "deletePod"})

WORLD_KEY: web.AppKey[World] = web.AppKey("world", World)
RUNNER_KEY: web.AppKey[ContainerRunner] = web.AppKey("runner", ContainerRunner)
# The RateLimit headers of an authenticated request, added when its response is prepared (streams too).
RATELIMIT_KEY: web.RequestKey[dict[str, str]] = web.RequestKey("ratelimit_headers", dict)


def problem(status: int, detail: str, *, errors: list[str] | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    """An RFC 9457 problem body as RunPod v2 sends it."""
    body: dict[str, Any] = {"title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json",
                        headers=headers)


class RateLimiter:
    """Per-user fixed windows (minute, hour, day), the quotas in the proportions of RunPod's examples."""

    def __init__(self, quota_per_minute: int, clock: Callable[[], float]) -> None:
        self.windows = (("minute", 60, quota_per_minute), ("hour", 3600, quota_per_minute * 50),
                        ("day", 86400, quota_per_minute * 800))
        self.clock = clock
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self) -> tuple[str, int] | None:
        """Count one call; (window, seconds to wait) when a window is exhausted (that call is not counted)."""
        now = self.clock()
        for name, length, quota in self.windows:
            if self._counts.get((name, int(now // length)), 0) >= quota:
                return name, max(1, math.ceil((int(now // length) + 1) * length - now))
        for name, length, _ in self.windows:
            key = (name, int(now // length))
            self._counts[key] = self._counts.get(key, 0) + 1
        if len(self._counts) > 64:  # forget windows that have passed
            current = {(name, int(now // length)) for name, length, _ in self.windows}
            self._counts = {k: v for k, v in self._counts.items() if k in current}
        return None

    def headers(self) -> dict[str, str]:
        now = self.clock()
        state, policy = [], []
        for name, length, quota in self.windows:
            index = int(now // length)
            remaining = max(0, quota - self._counts.get((name, index), 0))
            reset = max(1, math.ceil((index + 1) * length - now))
            state.append(f'"{name}";r={remaining};t={reset}')
            policy.append(f'"{name}";q={quota};w={length}')
        return {"RateLimit": ", ".join(state), "RateLimit-Policy": ", ".join(policy)}


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or a 413 problem once it passes `limit` bytes."""
    raw = bytearray()
    oversized = False
    async for chunk in request.content.iter_chunked(65536):
        if not oversized:
            raw += chunk
            oversized = len(raw) > limit
        elif request.content.total_bytes > _DRAIN_LIMIT_BYTES:
            break
    if oversized:
        raise RequestInvalidError(413, f"request body is larger than {limit} bytes")
    return bytes(raw)


class SandboxApi:
    """The handlers, bound to one world, one API key and one container runner."""

    def __init__(self, world: World, *, api_key: str, runner: ContainerRunner | None = None) -> None:
        self.world = world
        self.api_key = api_key
        self.runner = runner
        self.limiter = RateLimiter(world.settings.quota_per_minute, world.clock)

    def _changed(self) -> None:
        # Start or kill container commands right away instead of at the next tick.
        if self.runner is not None:
            self.runner.sync(self.world)

    async def _json(self, request: web.Request) -> Any:
        return parse_json(await read_body(request))

    # -- middleware --

    @web.middleware
    async def v2_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v2/") and request.path != "/v2":
            return await handler(request)
        route = request.match_info.route.resource
        operation = OPERATIONS.get((request.method, route.canonical)) if route is not None else None
        if operation is not None:
            self.world.count_call(operation)
        response = await self._v2(request, handler, operation)
        latency = self.world.faults.injected_latency(self.world.rng)
        if latency > 0:
            # Held after the work is done, like a slow network: a client that gives up on a slow create
            # still leaves the pod behind, which is exactly the case rpm's saved intent must handle.
            await asyncio.sleep(latency)
        return response

    async def _v2(self, request: web.Request, handler: Handler, operation: str | None) -> web.StreamResponse:
        faults = self.world.faults
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return problem(401, "missing bearer token")
        scoped_pod = None
        if token != self.api_key:
            scoped_pod = self.world.pod_for_key(token)
            if scoped_pod is None:
                return problem(401, "invalid bearer token")

        exceeded = self.limiter.hit()
        request[RATELIMIT_KEY] = self.limiter.headers()
        if faults.take("rate_limit"):
            exceeded = ("minute", max(0, int(faults.retry_after_seconds)))
        if exceeded is not None:
            window, retry_after = exceeded
            return problem(429, f"rate limit exceeded for the {window} window",
                           headers={"Retry-After": str(retry_after)})
        if scoped_pod is not None and (operation not in _POD_KEY_OPERATIONS
                                       or request.match_info.get("id") != scoped_pod.id):
            return problem(403, "access denied")

        route_error = request.match_info.http_exception
        if route_error is not None:
            return self._route_problem(route_error, request)
        status = faults.injected_error(self.world.rng)
        if status is not None:
            return problem(status, "upstream failure (injected by the sandbox)")
        try:
            return await handler(request)
        except RequestInvalidError as exc:
            detail = exc.detail
            return problem(exc.status, detail, errors=exc.errors or None)
        except WorldError as exc:
            return problem(exc.status, exc.detail)

    @staticmethod
    def _route_problem(error: web.HTTPException, request: web.Request) -> web.Response:
        if isinstance(error, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(error.allowed_methods))
            return problem(405, f"The method {request.method} is not allowed for {request.path}.",
                           headers={"Allow": allowed})
        if error.status == 404:
            return problem(404, f"no such resource: {request.path}")
        return problem(error.status, error.reason)

    # -- v2 pods --

    async def list_pods(self, request: web.Request) -> web.StreamResponse:
        parse_bool_param(request.query, "includeClusterPods")  # sandbox pods are never cluster members
        return web.json_response({"pods": [self.world.pod_json(pod) for pod in self.world.list_pods()]})

    async def create_pod(self, request: web.Request) -> web.StreamResponse:
        body = validate_create_pod(await self._json(request))
        if "templateId" in body:
            raise WorldError(404, f"template {body['templateId']} not found (the sandbox has no templates)")
        if "cpu" in body:
            raise WorldError(400, "CPU pods are not offered by the sandbox; request a gpu")
        pod = self.world.create_pod(body)
        self._changed()
        if self.world.faults.take("create_5xx_but_created"):
            # RunPod has answered 500 for creates that did place (and bill) a pod.
            return problem(500, "internal error while creating the pod")
        return web.json_response(self.world.pod_json(pod), status=201,
                                 headers={"Location": f"/v2/pods/{pod.id}"})

    async def get_pod(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.world.pod_json(self.world.get_pod(request.match_info["id"])))

    async def update_pod(self, request: web.Request) -> web.StreamResponse:
        pod_id = request.match_info["id"]
        self.world.get_pod(pod_id)  # 404 before judging the body
        body = validate_update_pod(await self._json(request))
        pod = self.world.update_pod(pod_id, body)
        self._changed()
        return web.json_response(self.world.pod_json(pod))

    async def delete_pod(self, request: web.Request) -> web.StreamResponse:
        self.world.terminate(request.match_info["id"])
        self._changed()
        return web.Response(status=204)

    async def pod_action(self, request: web.Request) -> web.StreamResponse:
        pod_id = request.match_info["id"]
        self.world.get_pod(pod_id)
        action = validate_pod_action(await self._json(request))
        pod = self.world.act(pod_id, action)
        self._changed()
        if pod is None:
            return web.Response(status=204)
        return web.json_response(self.world.pod_json(pod))

    async def pod_logs(self, request: web.Request) -> web.StreamResponse:
        pod = self.world.get_pod(request.match_info["id"])
        query = parse_log_query(request.query, request.headers.get("Last-Event-ID"))
        lines = sorted(pod.logs, key=lambda line: (line.ts, line.seq))
        if query.source:
            lines = [line for line in lines if line.source == query.source]
        if query.after_seq is not None:
            lines = [line for line in lines if line.seq > query.after_seq]
        elif query.since is not None:
            lines = [line for line in lines if line.ts >= math.floor(query.since)]
        else:
            lines = lines[-query.tail:] if query.tail else []
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        for line in lines:
            stamp = rfc3339(line.ts)
            data = json.dumps({"ts": stamp, "source": line.source, "line": line.line})
            await response.write(f"id: {stamp}/{line.seq:012d}\ndata: {data}\n\n".encode())
        # The backlog is all there is to send; ending the stream lets simple clients read to EOF.
        await response.write_eof()
        return response

    # -- v2 catalog and billing --

    async def list_gpu_types(self, request: web.Request) -> web.StreamResponse:
        query = parse_catalog_query(request.query)
        gpus = self.world.gpu_types(availability=query.availability, count=query.count, cloud=query.cloud,
                                    countries=query.countries, cuda_versions=query.cuda_versions,
                                    min_cuda=query.min_cuda)
        return web.json_response({"gpus": gpus})

    async def list_pod_billing(self, request: web.Request) -> web.StreamResponse:
        query = parse_billing_query(request.query)
        now = self.world.now()
        size = query.bucket_size
        if query.last_n is not None:
            current = bucket_floor(now, size)
            start = _buckets_back(current, size, query.last_n - 1)
            end = bucket_next(current, size)
        else:
            start = _snap(bucket_floor, query.start if query.start is not None else now - 30 * 86400, size,
                          "startTime")
            end = _snap(bucket_ceil, query.end if query.end is not None else now, size, "endTime")
        return web.json_response(self.world.pod_billing(bucket_size=size, start=start.timestamp(),
                                                        end=end.timestamp(), pod_id=query.pod_id))

    # -- control endpoints (not part of v2) --

    async def control_state(self, request: web.Request) -> web.StreamResponse:
        state = self.world.snapshot()
        state["containers"] = self.runner.pids() if self.runner is not None else {}
        return web.json_response(state)

    async def control_reset(self, request: web.Request) -> web.StreamResponse:
        self.world.reset()
        self.limiter = RateLimiter(self.world.settings.quota_per_minute, self.world.clock)
        self._changed()
        return web.json_response({"reset": True})

    async def control_faults(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            body = await self._json(request)
            if not isinstance(body, dict):
                raise RequestInvalidError(422, "faults must be a JSON object", ["$: expected object"])
            crash = body.pop("crash_model", None)
            if crash is not None:
                pod_id = crash.get("pod_id") if isinstance(crash, dict) else None
                if not isinstance(pod_id, str):
                    raise RequestInvalidError(422, "crash_model needs a pod_id",
                                              ["$.crash_model: expected {\"pod_id\": \"...\"}"])
                self.world.crash_model(pod_id)
            errors = self.world.faults.update(body)
            if errors:
                raise RequestInvalidError(422, "invalid faults", errors)
        return web.json_response(self.world.faults.to_dict())

    async def control_account(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        balance = body.get("balance_usd") if isinstance(body, dict) else None
        if not isinstance(balance, int | float) or isinstance(balance, bool):
            raise RequestInvalidError(422, "balance_usd must be a number", ["$.balance_usd: expected number"])
        self.world.settings.balance_usd = float(balance)
        self.world.dirty = True
        return web.json_response({"balanceUsd": self.world.settings.balance_usd,
                                  "spendUsd": self.world.spend_usd()})

    async def control_stock(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("free"), int) or body["free"] < 0:
            raise RequestInvalidError(422, "expected {gpu_id, data_center_id, cloud, free}",
                                      ["$.free: expected a non-negative integer"])
        self.world.set_stock(str(body.get("gpu_id")), str(body.get("data_center_id")),
                             str(body.get("cloud", "SECURE")), body["free"])
        return web.json_response({"ok": True})

    async def control_pod_status(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        status = body.get("status") if isinstance(body, dict) else None
        pod = self.world.set_status(request.match_info["id"], str(status))
        self._changed()
        return web.json_response(self.world.pod_json(pod))

    async def control_take_host(self, request: web.Request) -> web.StreamResponse:
        pod = self.world.take_host(request.match_info["id"])
        return web.json_response(self.world.pod_json(pod))

    @web.middleware
    async def control_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/_sandbox/"):
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            return problem(401, "the control endpoints need the account's API key as a bearer token")
        try:
            return await handler(request)
        except RequestInvalidError as exc:
            return problem(exc.status, exc.detail, errors=exc.errors or None)
        except WorldError as exc:
            return problem(exc.status, exc.detail)


def _snap(snap: Callable[[float, str], datetime], epoch_seconds: float, size: str, name: str) -> datetime:
    """A billing bound snapped to its bucket; 422 naming the parameter when that leaves datetime's range
    (a date-time near year 1 or 9999)."""
    try:
        return snap(epoch_seconds, size)
    except (OverflowError, ValueError):
        raise RequestInvalidError(422, VALIDATION_DETAIL, [
            f"$.query.{name}: out of range for bucketSize={size}"]) from None


def _buckets_back(start: datetime, size: str, count: int) -> datetime:
    """The bucket `count` buckets before `start` (clamped to 1970)."""
    earliest = datetime(1970, 1, 1, tzinfo=UTC)
    try:
        if size in ("hour", "day", "week"):
            step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[size]
            return max(start - step * count, earliest)
        if size == "month":
            months = start.year * 12 + start.month - 1 - count
            return max(start.replace(year=months // 12, month=months % 12 + 1), earliest)
        return max(start.replace(year=start.year - count), earliest)
    except (OverflowError, ValueError):
        return earliest


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: route errors become problem bodies; nothing unexpected ever escapes as a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if isinstance(exc, web.HTTPMethodNotAllowed):
            return problem(405, f"The method {request.method} is not allowed for {request.path}.",
                           headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
        if exc.status >= 400:
            return problem(exc.status, exc.reason)
        raise
    except RequestInvalidError as exc:
        return problem(exc.status, exc.detail, errors=exc.errors or None)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("sandbox: unexpected error handling %s %s", request.method, request.path)
        if request.path.startswith("/pods/"):
            body = {"error": {"message": "Internal Server Error", "type": "InternalServerError",
                              "param": None, "code": 500}}
            return web.json_response(body, status=500)
        return problem(500, "internal error")


async def _add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = request.get(RATELIMIT_KEY)
    if headers:
        response.headers.update(headers)


def create_app(world: World, *, api_key: str, token_delay_seconds: float = 0.0,
               runner: ContainerRunner | None = None,
               service_progress_seconds: float = PROGRESS_SECONDS) -> web.Application:
    """The whole sandbox as one aiohttp application (v2 API, control endpoints, pod model servers and
    generic services)."""
    api = SandboxApi(world, api_key=api_key, runner=runner)
    model = ModelServer(world, token_delay_seconds, ServiceServer(world, service_progress_seconds))
    # client_max_size only guards aiohttp's own body readers; ours enforce MAX_BODY_BYTES with a 413.
    app = web.Application(middlewares=[guard_middleware, api.control_middleware, api.v2_middleware],
                          client_max_size=MAX_BODY_BYTES)
    app[WORLD_KEY] = world
    if runner is not None:
        app[RUNNER_KEY] = runner
    app.on_response_prepare.append(_add_rate_limit_headers)
    router = app.router
    router.add_get("/v2/pods", api.list_pods)
    router.add_post("/v2/pods", api.create_pod)
    router.add_get("/v2/pods/{id}", api.get_pod)
    router.add_patch("/v2/pods/{id}", api.update_pod)
    router.add_delete("/v2/pods/{id}", api.delete_pod)
    router.add_post("/v2/pods/{id}/action", api.pod_action)
    router.add_get("/v2/pods/{id}/logs", api.pod_logs)
    router.add_get("/v2/catalog/gpus", api.list_gpu_types)
    router.add_get("/v2/billing/pods", api.list_pod_billing)
    router.add_get("/_sandbox/state", api.control_state)
    router.add_post("/_sandbox/reset", api.control_reset)
    router.add_route("GET", "/_sandbox/faults", api.control_faults)
    router.add_route("POST", "/_sandbox/faults", api.control_faults)
    router.add_post("/_sandbox/account", api.control_account)
    router.add_post("/_sandbox/stock", api.control_stock)
    router.add_post("/_sandbox/pods/{id}/status", api.control_pod_status)
    router.add_post("/_sandbox/pods/{id}/take-host", api.control_take_host)
    router.add_route("*", "/pods/{target}", model.handle)
    router.add_route("*", "/pods/{target}/{tail:.*}", model.handle)
    return app
