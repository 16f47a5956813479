"""`/rpm/v1`: the management API over HTTP, and its OpenAPI 3.1 document.

Who may do what is the request's key (proxy/auth.py puts its Principal on the request):
- admin keys: list every pod (status, readiness, deadline, spend: the same derived facts as /health and
  `rpm status`), start one (a lease, as `rpm start NAME`), stop or terminate one (as `rpm shutdown [--stop]
  NAME`; adopted pods are never terminated: 409), list the keys with their usage today, read the event log;
- user keys: the pods they may use, and their own usage; anything else is a 403 in the OpenAI error shape;
- no key when keys exist: 401 (the middleware, before any handler).
- No key exists at all (a one-person proxy, which `proxy.bind.check_bind` keeps on loopback): the caller is
  the machine's user and may do everything. Web pages may not: `middleware._cross_origin` refuses every POST under
  /rpm/ that a page caused, whatever `cors_allow_origins` says, so no page can start or terminate a pod.

Starts and stops go through the ProxyController (a worker thread; the event loop never calls RunPod). A start
opens the lease and asks RunPod to create or resume, answers 202, and leaves the readiness wait to the pod's
wake gate (the same wake a request would start, recorded as this key's), so the pod joins the routing as soon
as it answers. Every call that reaches a handler is written to the event log (`api_call`: the action, the
pod, the key's name — never its secret — and the status).

The document is data here (`openapi_document`), served at /rpm/v1/openapi.json; `/rpm/v1/docs` is plain HTML
made from it. tests/e2e/test_manage.py validates it, checks every route the app registers under /rpm/v1
against it (and back), and validates every request and response of the tests against its schemas.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import cache
from typing import Any

from aiohttp import web

from runpod_manager import __version__, keys
from runpod_manager.errors import ApiError, LimitRefused, LockBusy, NotOwned, PodLocked, RpmError, StopRefused
from runpod_manager.events import redact
from runpod_manager.keys import Principal
from runpod_manager.proxy.auth import PRINCIPAL, PUBLIC_PATHS
from runpod_manager.proxy.errors import ProxyError, json_response
from runpod_manager.proxy.ops import key_report, pod_entry
from runpod_manager.proxy.state import STATE, ProxyState

PREFIX = "/rpm/v1"
OPENAPI_PATH, DOCS_PATH = sorted(PUBLIC_PATHS, reverse=True)  # /rpm/v1/openapi.json, /rpm/v1/docs
EVENTS_DEFAULT_LIMIT = 100
EVENTS_MAX_LIMIT = 1000
NO_KEY_NAME = "(none)"  # the event log's `key` when the proxy has no keys at all (not a valid key name)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]



# ------------------------------------------------------------------------------------------ who may


def _principal(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def _require_admin(principal: Principal | None, action: str) -> None:
    if principal is not None and not principal.is_admin:
        raise ProxyError(403, f"the key {principal.name!r} is a user key; {action} needs an admin key "
                         "(`rpm keys create NAME --role admin`)", code="admin_required",
                         error_type="permission_error", should_retry=False)


def _pod_group(state: ProxyState, name: str) -> str:
    """The configured pod a pod name belongs to (a replica's is its pod's): what key scopes name."""
    if name not in state.gates:
        raise ProxyError(404, f"no pod named {name!r} here; the pods are {', '.join(state.gates)}",
                         code="pod_not_found", param="name", should_retry=False)
    return state.group_of[name].name


def _may_see(principal: Principal | None, group: str) -> bool:
    return principal is None or principal.is_admin or principal.may_use_pod(group)


# A script polling `GET /rpm/v1/pods` every few seconds must not flood the event log, which `rpm report` reads
# for each pod's billed stretches (its files rotate by size): a key's successful reads of one thing are one
# line per READ_LOG_SECONDS, the calls folded into it counted (`repeated`). Changes and refusals: every one.
READ_LOG_SECONDS = 60.0
READS = web.AppKey("rpm_manage_reads", dict)


def _fold_read(reads: dict[tuple[str, str, str | None], list[float]], what: tuple[str, str, str | None]
               ) -> int | None:
    """None: fold this read into the next line; else write one now, with the reads folded since the last."""
    now = time.monotonic()
    seen = reads.get(what)
    if seen is not None and now - seen[0] < READ_LOG_SECONDS:
        seen[1] += 1
        return None
    reads[what] = [now, 0.0]
    return 0 if seen is None else int(seen[1])


def managed(action: str, *, admin: bool) -> Callable[[Handler], Handler]:
    """A management handler: the role check (admin-only actions) and the event log line, whatever happens."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            principal = _principal(request)
            status, code = 500, "internal_error"
            try:
                if admin:
                    _require_admin(principal, action)
                response = await handler(request)
                status, code = response.status, ""
                return response
            except ProxyError as exc:
                status, code = exc.status, exc.code
                raise
            finally:
                name = NO_KEY_NAME if principal is None else principal.name
                pod = request.match_info.get("name")
                folded: int | None = 0
                if request.method == "GET" and status < 400:
                    folded = _fold_read(request.app[READS], (name, action, pod))
                if folded is not None:
                    request.app[STATE].events.write(
                        "api_call", action=action, key=name, role=None if principal is None else principal.role,
                        method=request.method, pod=pod, status=status, error=code or None,
                        **({"repeated": folded} if folded else {}))

        run.__doc__ = handler.__doc__
        return run

    return wrap


# ------------------------------------------------------------------------------------------ pods


@managed("list pods", admin=False)
async def list_pods(request: web.Request) -> web.Response:
    """GET /rpm/v1/pods: every pod an admin may see (replicas included), or a user key's own; from state."""
    state = request.app[STATE]
    principal = _principal(request)
    await state.fresh_views()
    return json_response({"pods": [pod_entry(state, name) for name in state.gates
                           if _may_see(principal, state.group_of[name].name)]})


@managed("read a pod", admin=False)
async def get_pod(request: web.Request) -> web.Response:
    """GET /rpm/v1/pods/{name}: one pod (a configured pod's name or a replica's)."""
    state = request.app[STATE]
    name = request.match_info["name"]
    group = _pod_group(state, name)
    principal = _principal(request)
    if not _may_see(principal, group):
        assert principal is not None  # noqa: S101 - _may_see is True without one
        raise ProxyError(403, f"the key {principal.name!r} may not use pod {group!r}", code="pod_not_allowed",
                         error_type="permission_error", param="name", should_retry=False)
    await state.fresh_views()
    return json_response(pod_entry(state, name))


def _control_error(exc: RpmError, name: str) -> ProxyError:
    message = redact(str(exc))
    if isinstance(exc, (LimitRefused, NotOwned)):
        return ProxyError(409, message, code="pod_not_owned" if isinstance(exc, NotOwned) else "limit_refused",
                          error_type="invalid_request_error", param="name", should_retry=False)
    if isinstance(exc, LockBusy):
        return ProxyError(503, message, code="state_busy", retry_after_seconds=5.0, should_retry=True)
    if isinstance(exc, StopRefused):  # the pod runs and bills on; what blocks it is the pod's own state
        return ProxyError(409, message, code="pod_locked" if isinstance(exc, PodLocked) else "stop_refused",
                          error_type="invalid_request_error", param="name", should_retry=False)
    if isinstance(exc, ApiError):
        return ProxyError(502, f"RunPod refused or failed for pod {name!r}: {message}", code="runpod_error",
                          should_retry=False)
    return ProxyError(503, message, code="action_failed", should_retry=False)


async def _control(state: ProxyState, name: str, call: Callable[[], Any]) -> None:
    try:
        await asyncio.to_thread(call)
    except RpmError as exc:
        raise _control_error(exc, name) from None
    await state.fresh_views()


@managed("start a pod", admin=True)
async def start_pod(request: web.Request) -> web.Response:
    """POST /rpm/v1/pods/{name}/start: open a lease and create or resume the pod; 202 while it boots."""
    state = request.app[STATE]
    name = request.match_info["name"]
    _pod_group(state, name)
    principal = _principal(request)
    gate = state.gates[name]
    await _control(state, name, lambda: state.controller.start(name, "api"))
    if gate.target is None:
        target = await asyncio.to_thread(state.controller.current_target, name)
        if target is not None:
            gate.set_target(target)
        else:  # the readiness wait, as a request's wake does it: the pod joins the routing when it answers
            gate.start_wake(asyncio.get_running_loop(), None if principal is None else principal.name)
    entry = pod_entry(state, name)
    return json_response({"action": "start", "pod": entry}, 200 if entry["ready"] else 202)


async def _end(request: web.Request, *, terminate: bool) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    _pod_group(state, name)
    gate = state.gates[name]
    await _control(state, name, lambda: state.controller.stop(name, terminate=terminate))
    state.group_of[name].note_stopped(gate)  # a wake in progress ends; a request from now on wakes it again
    if gate.target is not None:  # nothing more is sent there
        gate.forget(gate.target.instance_id)
    return json_response({"action": "terminate" if terminate else "stop", "pod": pod_entry(state, name)})


@managed("stop a pod", admin=True)
async def stop_pod(request: web.Request) -> web.Response:
    """POST /rpm/v1/pods/{name}/stop: close the lease and stop the pod (its disk stays; a start resumes it)."""
    return await _end(request, terminate=False)


@managed("terminate a pod", admin=True)
async def terminate_pod(request: web.Request) -> web.Response:
    """POST /rpm/v1/pods/{name}/terminate: close the lease and terminate the pod (rpm's own pods only)."""
    return await _end(request, terminate=True)


# ------------------------------------------------------------------------------------------ keys and usage


def _usage_json(usage: keys.KeyUsage) -> dict[str, Any]:
    return {"requests": usage.requests, "tokens": usage.tokens, "spend_usd": round(usage.spend_usd, 6),
            "refused": usage.refused}


def _error_from_state(exc: RpmError) -> ProxyError:
    return ProxyError(500, redact(str(exc)), code="state_unreadable", should_retry=False)


@managed("list keys", admin=True)
async def list_keys(request: web.Request) -> web.Response:
    """GET /rpm/v1/keys: every key (revoked ones too) with its usage today."""
    try:
        report = await key_report(request.app[STATE])
    except RpmError as exc:
        raise _error_from_state(exc) from None
    return json_response({"day": report.day, "keys": [
        {**keys.record_json(row.record), "status": row.status, "usage_today": _usage_json(row.today),
         "last_used_at": None if row.last_used_at is None else keys.iso_utc(row.last_used_at)} for row in report.rows]})


def _own_usage(state: ProxyState, principal: Principal) -> dict[str, Any]:
    """The key and its usage today, from this proxy's live counters (on the loop)."""
    now = time.time()
    day = keys.usage_day(now, state.config.zone)
    usage = state.limiter.today(now).get(principal.name) or keys.KeyUsage()
    return {"day": day, "key": {
        "name": principal.name, "role": principal.role, "source": principal.source,
        "pods": None if principal.pods is None else sorted(principal.pods),
        "models": None if principal.models is None else sorted(principal.models),
        "limits": keys.limits_json(principal.limits),
        "expires_at": None if principal.expires_at is None else keys.iso_utc(principal.expires_at)},
        "usage_today": _usage_json(usage)}


@managed("read own usage", admin=False)
async def own_usage(request: web.Request) -> web.Response:
    """GET /rpm/v1/usage: the calling key, its scopes and limits, and its usage today."""
    state = request.app[STATE]
    principal = _principal(request)
    if principal is None:
        raise ProxyError(404, "this proxy has no keys, so no usage is counted per key; create one with "
                         "`rpm keys create NAME`", code="no_keys", should_retry=False)
    return json_response(_own_usage(state, principal))


# ------------------------------------------------------------------------------------------ events


def _query_limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return EVENTS_DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= EVENTS_MAX_LIMIT:
        raise ProxyError(400, f"limit must be a whole number from 1 to {EVENTS_MAX_LIMIT}, not {text[:40]!r}",
                         code="invalid_parameter", param="limit", should_retry=False)
    return int(text)


def _query_since(request: web.Request) -> datetime | None:
    text = request.query.get("since")
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ProxyError(400, f"since must be an ISO 8601 time with its zone (e.g. 2026-01-31T18:00:00Z), not "
                         f"{text[:40]!r}", code="invalid_parameter", param="since", should_retry=False)
    return moment


@managed("read the event log", admin=True)
async def list_events(request: web.Request) -> web.Response:
    """GET /rpm/v1/events?since=&limit=: the event log, oldest first after `since`, or its last `limit`."""
    since, limit = _query_since(request), _query_limit(request)
    page = await asyncio.to_thread(request.app[STATE].events.page, since, limit)
    next_since = page.events[-1].get("time") if page.events else request.query.get("since")
    return json_response({"events": page.events, "more": page.more, "complete": page.complete,
                          "next_since": next_since})


# ------------------------------------------------------------------------------------------ the document


async def openapi_json(_request: web.Request) -> web.Response:
    """GET /rpm/v1/openapi.json: this API's OpenAPI 3.1 document."""
    return json_response(openapi_document())


async def docs_page(_request: web.Request) -> web.Response:
    """GET /rpm/v1/docs: the document as one plain HTML page."""
    return web.Response(text=docs_html(openapi_document()), content_type="text/html")


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", f"{PREFIX}/pods", list_pods),
    ("GET", f"{PREFIX}/pods/{{name}}", get_pod),
    ("POST", f"{PREFIX}/pods/{{name}}/start", start_pod),
    ("POST", f"{PREFIX}/pods/{{name}}/stop", stop_pod),
    ("POST", f"{PREFIX}/pods/{{name}}/terminate", terminate_pod),
    ("GET", f"{PREFIX}/keys", list_keys),
    ("GET", f"{PREFIX}/usage", own_usage),
    ("GET", f"{PREFIX}/events", list_events),
    ("GET", OPENAPI_PATH, openapi_json),
    ("GET", DOCS_PATH, docs_page),
)


def add_routes(app: web.Application) -> None:
    app[READS] = {}
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_TIME = {"type": "string", "format": "date-time"}
_NAMES = _nullable({"type": "array", "items": {"type": "string"}})
_ERRORS = {
    "400": "A query parameter is invalid", "401": "No key, or an unknown, revoked or expired one",
    "403": "The key may not do this (user keys: their pods and their own usage only), or a web page asked",
    "404": "No such pod (or job: unknown, expired, or another key's)",
    "409": "Refused: a limit forbids the start, the pod is adopted (never terminated), or the job is running",
    "502": "RunPod refused or failed", "503": "The state is busy (retry) or the action failed",
}


def _error_responses(*codes: str) -> dict[str, Any]:
    return {code: {"description": _ERRORS[code],
                   "content": {"application/json": {"schema": _ref("Error")}}} for code in codes}


def _ok(description: str, schema: dict[str, Any], code: str = "200") -> dict[str, Any]:
    return {code: {"description": description, "content": {"application/json": {"schema": schema}}}}


_JOB_PARAMETER = {"name": "id", "in": "path", "required": True, "description": "The job's id, from its 202 "
                  "(`Location`, `X-RPM-Job-Id`)", "schema": {"type": "string", "pattern": "^job_[A-Za-z0-9_-]{32}$"}}
_NAME_PARAMETER = {"name": "name", "in": "path", "required": True, "description": "A configured pod's name, or a "
                   "replica's (`chat-r2`)", "schema": {"type": "string"}}


def _action(summary: str, description: str, *extra_errors: str, accepted: bool = False) -> dict[str, Any]:
    responses = _ok("Done; the pod as it is now", _ref("PodAction"))
    if accepted:
        responses.update(_ok("The pod is being created or resumed; it joins the routing when ready",
                             _ref("PodAction"), "202"))
    return {"post": {"operationId": summary.replace(" ", "_").lower(), "summary": summary, "description": description,
                     "tags": ["pods"], "security": [{"bearer": []}], "parameters": [_NAME_PARAMETER],
                     "responses": {**responses, **_error_responses("401", "403", "404", *extra_errors)}}}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route this module registers (built once)."""
    pod_schema = {
        "type": "object",
        "required": ["name", "replica_of", "models", "pod_id", "status", "ready", "lease_open", "deadline",
                     "idle_ends_at", "spend_today_usd", "max_daily_spend_usd", "queue_depth", "in_flight", "waking",
                     "woken_by", "woken_at"],
        "properties": {
            "name": {"type": "string"}, "replica_of": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
            "pod_id": _nullable({"type": "string"}), "status": _nullable({"type": "string"}),
            "ready": {"type": "boolean"}, "lease_open": {"type": "boolean"},
            "deadline": _nullable(_TIME), "idle_ends_at": _nullable({"type": "string"}),
            "spend_today_usd": {"type": "number"}, "max_daily_spend_usd": {"type": "number"},
            "queue_depth": {"type": "integer"}, "oldest_wait_seconds": _nullable({"type": "number"}),
            "in_flight": {"type": "integer"}, "waking": {"type": "boolean"}, "target_known": {"type": "boolean"},
            "last_wake_error": _nullable({"type": "string"}),
            "woken_by": _nullable({"type": "string", "description": "the key whose request or call started the "
                                   "latest wake (null: no key, or none yet)"}),
            "woken_at": _nullable(_TIME),
        },
    }
    limits = {"type": "object", "required": ["requests_per_minute", "tokens_per_minute", "max_concurrent",
                                             "daily_budget_usd"],
              "properties": {"requests_per_minute": _nullable({"type": "integer"}),
                             "tokens_per_minute": _nullable({"type": "integer"}),
                             "max_concurrent": _nullable({"type": "integer"}),
                             "daily_budget_usd": _nullable({"type": "number"})}}
    usage = {"type": "object", "required": ["requests", "tokens", "spend_usd", "refused"],
             "properties": {"requests": {"type": "integer"}, "tokens": {"type": "integer"},
                            "spend_usd": {"type": "number"}, "refused": {"type": "integer"}}}
    key = {"type": "object", "additionalProperties": False,
           "required": ["name", "role", "pods", "models", "limits", "created_at", "expires_at", "revoked_at",
                        "status", "usage_today", "last_used_at"],
           "properties": {"name": {"type": "string"}, "role": {"enum": ["user", "admin"]}, "pods": _NAMES,
                          "models": _NAMES, "limits": _ref("KeyLimits"), "created_at": _TIME,
                          "expires_at": _nullable(_TIME), "revoked_at": _nullable(_TIME),
                          "status": {"enum": ["active", "expired", "revoked"]}, "usage_today": _ref("Usage"),
                          "last_used_at": _nullable(_TIME)}}
    error = {"type": "object", "required": ["error"], "additionalProperties": False,
             "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"],
                                      "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                                     "param": _nullable({"type": "string"}),
                                                     "code": _nullable({"type": "string"})}}}}
    job_schema = {
        "type": "object",
        "required": ["id", "object", "state", "pod", "method", "path", "created_at", "started_at", "finished_at",
                     "expires_at", "status_url", "result_url"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "rpm.job"},
            "state": {"enum": ["queued", "waking", "running", "done", "failed"]},
            "pod": {"type": "string"}, "method": {"type": "string"}, "path": {"type": "string"},
            "owner": {"type": "string", "description": "the name of the key that submitted it"},
            "position": {"type": "integer", "minimum": 1, "description": "queued: its place in its pod's queue"},
            "created_at": _TIME, "started_at": _nullable(_TIME), "finished_at": _nullable(_TIME),
            "expires_at": _nullable(_TIME), "status_url": {"type": "string"}, "result_url": {"type": "string"},
            "error": {"type": "object", "required": ["message", "code"],
                      "properties": {"message": {"type": "string"}, "code": {"type": "string"}}},
            "response": {"type": "object", "required": ["status", "headers", "bytes"],
                         "properties": {"status": {"type": "integer"},
                                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "bytes": {"type": "integer"},
                                        "body": {"description": "the body, when it is JSON and small"}}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "rpm management API", "version": __version__,
                 "description": "Pods, keys, usage and the event log of one rpm proxy. Send a key from `rpm keys "
                 "create` as `Authorization: Bearer <key>`; admin keys may do everything, user keys may read the "
                 "pods they may use and their own usage. A proxy without any key (loopback only) lets its "
                 "machine's user do everything, and no web page start or end a pod."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Job": job_schema, "Pod": pod_schema, "KeyLimits": limits, "Usage": usage, "Key": key,
                        "Error": error,
                        "PodAction": {"type": "object", "required": ["action", "pod"],
                                      "properties": {"action": {"enum": ["start", "stop", "terminate"]},
                                                     "pod": _ref("Pod")}}},
        },
        "security": [{"bearer": []}],
        "paths": {
            f"{PREFIX}/pods": {"get": {
                "operationId": "list_pods", "summary": "List pods", "tags": ["pods"],
                "description": "Every pod (replicas included) with status, readiness, deadline and spend today, "
                "from state: no RunPod call, no wake. A user key sees the pods it may use.",
                "responses": {**_ok("The pods", {"type": "object", "required": ["pods"], "properties": {
                    "pods": {"type": "array", "items": _ref("Pod")}}}), **_error_responses("401")}}},
            f"{PREFIX}/pods/{{name}}": {"get": {
                "operationId": "get_pod", "summary": "Read a pod", "tags": ["pods"],
                "parameters": [_NAME_PARAMETER],
                "responses": {**_ok("The pod", _ref("Pod")), **_error_responses("401", "403", "404")}}},
            f"{PREFIX}/pods/{{name}}/start": _action(
                "Start a pod", "Admin. Opens a lease (as `rpm start NAME`) and creates or resumes the pod; 202 "
                "while it boots. A start that cannot run leaves nothing billing.", "409", "502", "503",
                accepted=True),
            f"{PREFIX}/pods/{{name}}/stop": _action(
                "Stop a pod", "Admin. Closes the lease and stops the pod (its disk stays).", "502", "503"),
            f"{PREFIX}/pods/{{name}}/terminate": _action(
                "Terminate a pod", "Admin. Closes the lease and terminates the pod. Adopted pods (`pod_id` in "
                "the config) are never terminated: 409.", "409", "502", "503"),
            f"{PREFIX}/keys": {"get": {
                "operationId": "list_keys", "summary": "List keys and their usage today", "tags": ["keys"],
                "description": "Admin. Every key of the store, revoked ones too; never a secret or a hash.",
                "responses": {**_ok("The keys", {"type": "object", "required": ["day", "keys"], "properties": {
                    "day": {"type": "string", "format": "date"}, "keys": {"type": "array", "items": _ref("Key")}}}),
                    **_error_responses("401", "403")}}},
            f"{PREFIX}/usage": {"get": {
                "operationId": "own_usage", "summary": "The calling key's usage today", "tags": ["keys"],
                "responses": {**_ok("The key and its usage", {
                    "type": "object", "required": ["day", "key", "usage_today"], "properties": {
                        "day": {"type": "string", "format": "date"},
                        "key": {"type": "object", "required": ["name", "role", "pods", "models", "limits"],
                                "properties": {"name": {"type": "string"}, "role": {"enum": ["user", "admin"]},
                                               "source": {"enum": ["store", "config"]}, "pods": _NAMES,
                                               "models": _NAMES, "limits": _ref("KeyLimits"),
                                               "expires_at": _nullable(_TIME)}},
                        "usage_today": _ref("Usage")}}),
                    **_error_responses("401", "404")}}},
            f"{PREFIX}/events": {"get": {
                "operationId": "list_events", "summary": "Read the event log", "tags": ["events"],
                "description": "Admin. Events after `since`, oldest first, at most `limit` (page on with "
                "`next_since`); without `since`, the last `limit`. Read from the end of the current log file.",
                "parameters": [
                    {"name": "since", "in": "query", "required": False, "schema": _TIME},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": EVENTS_MAX_LIMIT,
                                "default": EVENTS_DEFAULT_LIMIT}}],
                "responses": {**_ok("A page of events", {
                    "type": "object", "required": ["events", "more", "complete", "next_since"], "properties": {
                        "events": {"type": "array", "items": {"type": "object", "required": ["time", "event"],
                                                              "properties": {"time": _TIME,
                                                                             "event": {"type": "string"}}}},
                        "more": {"type": "boolean"}, "complete": {"type": "boolean"},
                        "next_since": _nullable({"type": "string"})}}),
                    **_error_responses("400", "401", "403")}}},
            f"{PREFIX}/jobs/{{id}}": {
                "get": {"operationId": "get_job", "summary": "Read a job", "tags": ["jobs"],
                        "description": "A job made by sending any routed request (`/v1/…`, `/pods/<name>/…`) with "
                        "`Prefer: respond-async`: its state (queued with its position in its pod's queue, waking, "
                        "running, done with the stored response, failed with the error). A keyed job is its "
                        "key's (and admins') to read.",
                        "parameters": [_JOB_PARAMETER],
                        "responses": {**_ok("The job", _ref("Job")), **_error_responses("401", "404")}},
                "delete": {"operationId": "delete_job", "summary": "Cancel a queued job, or drop a finished one",
                           "tags": ["jobs"], "parameters": [_JOB_PARAMETER],
                           "responses": {**_ok("Cancelled or deleted", {
                               "type": "object", "required": ["id", "object", "state", "deleted"],
                               "properties": {"id": {"type": "string"}, "object": {"const": "rpm.job"},
                                              "state": {"enum": ["cancelled", "deleted"]},
                                              "deleted": {"const": True}}}),
                               **_error_responses("401", "404", "409")}}},
            f"{PREFIX}/jobs/{{id}}/result": {"get": {
                "operationId": "get_job_result", "summary": "The stored response of a finished job",
                "tags": ["jobs"], "parameters": [_JOB_PARAMETER],
                "description": "Byte for byte as the service answered (its status, headers and body; so any "
                "status). Not finished yet: 202 with the job. Failed: 502.",
                "responses": {"200": {"description": "The service's answer, as it gave it"},
                              "default": {"description": "The service's answer, with its own status"},
                              **_ok("Not finished: the job, with Retry-After", _ref("Job"), "202"),
                              **_error_responses("401", "404", "502")}}},
            OPENAPI_PATH: {"get": {"operationId": "openapi", "summary": "This document", "tags": ["docs"],
                                   "security": [], "responses": _ok("The OpenAPI document", {"type": "object"})}},
            DOCS_PATH: {"get": {"operationId": "docs", "summary": "This document as an HTML page", "tags": ["docs"],
                                "security": [], "responses": {"200": {"description": "The page", "content": {
                                    "text/html": {"schema": {"type": "string"}}}}}}},
        },
    }


def docs_html(document: dict[str, Any]) -> str:
    """A plain, self-contained page of the document: each operation, its parameters and its answers."""
    esc = html.escape
    sections = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            parameters = "".join(
                f"<li><code>{esc(p['name'])}</code> ({esc(p['in'])}{', required' if p.get('required') else ''})"
                f"{': ' + esc(p['description']) if p.get('description') else ''}</li>"
                for p in operation.get("parameters", []))
            answers = "".join(f"<li><code>{esc(code)}</code> {esc(answer['description'])}</li>"
                              for code, answer in operation["responses"].items())
            sections.append(
                f'<section id="{esc(operation["operationId"])}"><h2><code>{esc(method.upper())} {esc(path)}</code>'
                f"</h2><p>{esc(operation['summary'])}. {esc(operation.get('description', ''))}</p>"
                + (f"<h3>Parameters</h3><ul>{parameters}</ul>" if parameters else "")
                + f"<h3>Responses</h3><ul>{answers}</ul></section>")
    info = document["info"]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(info["title"])}</title>'
            '<style>body{font:15px/1.5 system-ui,sans-serif;max-width:52em;margin:2em auto;padding:0 1em}'
            "code{background:#f3f3f3;padding:0 .2em}section{border-top:1px solid #ddd}</style></head><body>"
            f"<h1>{esc(info['title'])} {esc(info['version'])}</h1><p>{esc(info['description'])}</p>"
            f'<p>The document itself: <a href="{esc(OPENAPI_PATH)}">{esc(OPENAPI_PATH)}</a></p>'
            + "".join(sections) + "</body></html>")
