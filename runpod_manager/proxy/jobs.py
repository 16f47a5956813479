"""Queued jobs: a request sent with `Prefer: respond-async` (RFC 7240) is answered `202 Accepted` at once and
run later, in order, by the proxy itself; its status and stored response are read at `/rpm/v1/jobs/{id}`.

A job is a stored request: method, path with its query, the headers that matter (never a credential: see
`stored_headers`) and its body, spooled to a 0600 file as it arrives (never held whole in memory). The
store (`JobStore`, jobstore.py) is one sqlite file in the state directory's `jobs/` (0700), with the spooled request
bodies and the stored responses beside it, bounded in count and bytes ([proxy] jobs_max_count,
jobs_max_bytes). One proxy owns a state directory, so no other connection writes (and checkpoints) under
it, and its short transactions run on the loop (BENCHMARKS.md, "Jobs"). WAL with synchronous=NORMAL: a
commit survives the proxy's crash or restart; only an operating-system crash may lose the last ones.

Running (`JobRunner`): per pod, the oldest queued jobs first, at most [proxy] jobs_concurrency at once. A job
is marked running in the store *before* its request is sent, and marked sent (`sent_at`) by the proxy's
forwarder just before the replay's request leaves toward the pod (`JobRunner.sending`, from the job id the
replay carries). A job found running when the store opens (the proxy stopped or crashed under it) becomes
failed, never re-sent, when it was sent: its request may have reached the service, and a non-idempotent one
must reach it at most once. One never sent (it waited for its pod's wake) provably did not: it is queued again
in its place. A job still queued runs after the restart.

The request is replayed through the proxy itself, over loopback HTTP to its own bound address, carrying a
per-process random token (`X-RPM-Job-Token`, held in memory only, never logged, stored or sent upstream)
that the middleware accepts in place of an API key. So a job goes through the same routing, wake queue,
idle accounting, metrics and request log as a direct request, for every route the proxy has: /v1 today and
/pods/<name>/… (pass-through), with nothing here to change. (An in-process call would have to
rebuild an aiohttp request for every handler; the loopback hop costs a fraction of a millisecond:
BENCHMARKS.md.) While the replay waits for a wake the job shows as `waking`. The proxy's own retryable
answers that prove the request never left it (the wake queue was full, the pod still wakes: marked with
`X-RPM-Error`) are retried after their Retry-After; any other answer is the job's result.

A full disk (ENOSPC, a quota, a file-size limit; sqlite's SQLITE_FULL) while a job is submitted is a 507
naming the directory, with the body file removed and no row added; while a result is stored, the job fails
saying so and the partial result file is removed. Nothing half-written is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.payload
from aiohttp import web
from multidict import CIMultiDict

from runpod_manager.keys import Principal
from runpod_manager.proxy.auth import PRINCIPAL
from runpod_manager.proxy.errors import ProxyError, disk_full_error, is_disk_full, json_response
from runpod_manager.proxy.forward import (
    HOP_BY_HOP,
    JOB_ID_HEADER,
    JOB_OWNER_HEADER,
    JOB_TOKEN_HEADER,
    forwarded_for,
    write_fully,
)
from runpod_manager.proxy.jobstore import (
    Job,
    JobsFull,
    JobState,
    JobStore,
    JobStoreBusy,
    PodJobs,
    is_job_id,
    new_job_id,
    stored_headers,
)

log = logging.getLogger("runpod_manager.proxy")


# On a replay's request (set by the middleware from JOB_ID_HEADER, with the job token only): its job's id.
REPLAYED_JOB = web.RequestKey("rpm_replayed_job", str)


# Set by the middleware on the proxy's own error answers to a job's replay: the error's code, so the runner
# tells "the proxy answered and the request never left" from anything a service could say.
ERROR_HEADER = "X-RPM-Error"


# The proxy's own refusals that prove the request never left it and will pass later: asked again after their
# Retry-After. (A key's rate and concurrency limits too: the job waits its turn; a spent budget fails it.)
RETRIED_CODES = frozenset({"pod_waking", "pod_stopped", "queue_full", "state_busy", "rate_limit_requests",
                           "rate_limit_tokens", "concurrency_limit_exceeded"})


JOBS_PATH = "/rpm/v1/jobs"


_CHUNK_BYTES = 64 * 1024


INLINE_BODY_MAX_BYTES = 256 * 1024  # a JSON result this small is shown inline in the status document


# Of a job's response: framing (the stored body is served with its own length), the proxy's date and server.
_RESULT_HEADERS_DROPPED = HOP_BY_HOP | {"content-length", "date", "server", JOB_ID_HEADER.lower(),
                                       ERROR_HEADER.lower()}


def wants_async(prefer_values: Iterable[str]) -> bool:
    """Whether the Prefer header(s) ask for `respond-async` (RFC 7240: comma-separated, parameters after `;`)."""
    for value in prefer_values:
        for preference in value.split(","):
            name = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
            if name == "respond-async":
                return True
    return False


# ------------------------------------------------------------------------------------------ the runner

# Routing's answer for a job: (method, path, the path as sent (raw, with its query: what the replay sends), a
# reader of the spooled body, called only when routing or the key's model scope needs it, its Content-Type, the
# submitting key) → the configured pod's name; raises ProxyError as a direct request would be answered, a scope
# the key lacks and a path the pass-through refuses included.
Resolver = Callable[[str, str, str, Callable[[], bytes], str, Principal | None], str]


class JobRunner:
    """Submits, runs and answers for jobs, on the proxy's loop."""

    def __init__(self, store: JobStore, *, concurrency: int, body_limit: Callable[[str], int], resolve: Resolver,
                 pod_waking: Callable[[str], bool], full_retry_after_seconds: float = 5.0,
                 sleep: Callable[[float], Any] = asyncio.sleep, trust_forwarded: bool = False) -> None:
        self.trust_forwarded = trust_forwarded  # [proxy] trust_forwarded: what X-Forwarded-For a job stores
        self.store = store
        self.concurrency = concurrency
        # A path's largest body: a job takes what a direct request to the same route takes ([proxy]
        # max_body_bytes for /v1, an http pod's own max_body_bytes under /pods/), within jobs_max_bytes.
        self.body_limit = body_limit
        self.full_retry_after_seconds = full_retry_after_seconds
        self._resolve = resolve
        self._pod_waking = pod_waking
        self._sleep = sleep
        self._token = secrets.token_urlsafe(32)  # this process's only: memory, never a file or a log line
        self._base_url: str | None = None
        self._ssl: bool = True
        self._session: aiohttp.ClientSession | None = None
        self._running: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._spooling_bytes = 0
        self._spooling_count = 0
        self.closing = False
        self.unavailable: str | None = "the job store is not open yet"

    def is_replay(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._token.encode())

    def open(self) -> None:
        """Open the store. A store that cannot be opened is logged and disables jobs, never the proxy."""
        try:
            interrupted = self.store.open()
        except JobStoreBusy as exc:
            self.unavailable = str(exc)
            log.error("%s; this proxy refuses jobs", exc)  # noqa: TRY400 - said, no traceback to show
            return
        except (OSError, sqlite3.Error) as exc:
            self.store.close()
            self.unavailable = f"the job store {self.store.directory} cannot be opened ({exc})"
            log.error("%s; jobs are refused until the proxy restarts", self.unavailable)  # noqa: TRY400 - said
            return
        if interrupted:
            log.warning("%d job(s) were running when the proxy stopped and may have reached the service; they "
                        "failed without being sent again", len(interrupted))
        if self.store.requeued:
            log.info("%d job(s) were waiting for their pod when the proxy stopped; never sent, they are queued "
                     "again", self.store.requeued)
        self.unavailable = None

    async def start(self, base_url: str) -> None:
        """Open the store and begin running jobs, replaying them to the proxy at `base_url` (its own bound
        address). Called once the proxy listens: a proxy that failed to bind never touched the jobs."""
        self.open()
        self._base_url = base_url.rstrip("/")
        # Our own loopback socket, whose certificate names the public host: nothing to verify.
        self._ssl = not base_url.startswith("https:")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),  # the proxy bounds its own waits
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False)
        self.pump()

    async def close(self) -> None:
        """Stop: jobs in flight are cancelled and fail (never re-sent); queued ones stay for the next start."""
        self.closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def shut(self) -> None:
        self.unavailable = "the proxy stopped"
        self.store.close()

    # ----------------------------------------------------------------------------------- submit

    async def submit(self, request: web.Request, principal: Principal | None = None) -> web.Response:
        """Store the request as a job and answer 202 (or the error a direct request would get). A keyed job
        belongs to its key (`owner`, the name only): only that key (or an admin) reads it, and its replay gets
        that key's scopes and limits; a pod or model the key may not use is refused here, before anything is stored."""
        owner = None if principal is None else principal.name
        if self.unavailable is not None:
            raise ProxyError(503, f"jobs are not available: {self.unavailable}", code="jobs_unavailable",
                             should_retry=False)
        store = self.store
        store.purge_expired()
        declared = request.content_length
        limit = self.body_limit(request.path)
        if declared is not None and declared > limit:
            raise _too_large(limit)
        self._check_room(declared or 0)
        job_id = new_job_id()
        body_path = store.body_path(job_id)
        self._spooling_count += 1
        try:
            received = await self._spool(request, body_path, limit)
            # The body is read for /v1's model and a scoped key's (within [proxy] max_body_bytes: a model pod's).
            pod = self._resolve(request.method, request.path, request.raw_path, body_path.read_bytes,
                                request.headers.get("Content-Type", ""), principal)
            job = store.add(job_id, pod=pod, method=request.method, path=request.raw_path,
                            headers=stored_headers(request.headers.items(),
                                                   forwarded=forwarded_for(request, trust=self.trust_forwarded)),
                            request_bytes=received, owner=owner)
        except BaseException as exc:
            JobStore._unlink(body_path)
            if _store_full(exc):
                log.warning("job refused: the disk holding %s is full (%s)", store.directory, exc)
                raise disk_full_error(store.directory, "the job's request") from None
            raise
        finally:
            self._spooling_count -= 1
        log.info("job %s queued for pod %s (%s %s)", _shown(job_id), pod, request.method, request.path)
        document = self.document(job)
        asyncio.get_running_loop().call_soon(self.pump)  # after the answer: it says where the job was queued
        location = f"{JOBS_PATH}/{job_id}"
        return web.Response(status=202, body=json.dumps(document).encode(), content_type="application/json",
                            headers={"Location": location, "Preference-Applied": "respond-async",
                                     JOB_ID_HEADER: job_id})

    def _check_room(self, extra_bytes: int, *, spooling: bool = False) -> None:
        """503 unless this job fits beside the stored ones and those being received (`spooling`: this one is
        among them already)."""
        try:
            self.store.check_room(extra_count=self._spooling_count + (0 if spooling else 1),
                                  extra_bytes=self._spooling_bytes + extra_bytes)
        except JobsFull as exc:
            raise ProxyError(503, f"the job queue is full: {exc}; retry later, or fetch or delete finished jobs",
                             code="jobs_full", retry_after_seconds=self.full_retry_after_seconds,
                             should_retry=True) from None

    async def _spool(self, request: web.Request, path: Path, limit: int) -> int:
        """Write the body to a 0600 file as it arrives; its size. 413 past `limit`, 503 past the store."""
        received = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            if not request.body_exists:
                return 0
            async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
                received += len(chunk)
                self._spooling_bytes += len(chunk)
                if received > limit:
                    raise _too_large(limit)
                if request.content_length is None:
                    self._check_room(0, spooling=True)  # a chunked body is counted as it comes
                write_fully(fd, chunk)  # unbuffered: a full disk fails here, never at a later close
            return received
        finally:  # spooled bytes count against the bound until the job is stored (or refused)
            os.close(fd)
            self._spooling_bytes -= received

    # -------------------------------------------------------------------------------------- run

    def pump(self) -> None:
        """Start every job that may start: per pod, the oldest queued while fewer than jobs_concurrency run."""
        if self.closing or self._session is None or self.unavailable is not None:
            return
        store = self.store
        for pod in store.queued_pods():
            while self._running.get(pod, 0) < self.concurrency:
                job = store.next_queued(pod)
                if job is None or not store.mark_running(job.id):
                    break
                self._running[pod] = self._running.get(pod, 0) + 1
                self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"rpm-job-{_shown(job.id)}")

    async def _run(self, job: Job) -> None:
        try:
            outcome = await self._send(job)
        except asyncio.CancelledError:  # the proxy stops: queued again if never sent, else failed
            with contextlib.suppress(sqlite3.Error, RuntimeError):
                self.store.interrupt(job.id)
            raise
        except Exception as exc:
            log.warning("job %s failed: %s", _shown(job.id), type(exc).__name__)
            self.store.fail(job.id, f"the proxy could not run the request ({type(exc).__name__})")
        else:
            if isinstance(outcome, str):
                self.store.fail(job.id, outcome)
            log.info("job %s %s", _shown(job.id), "failed" if isinstance(outcome, str) else "done")
        finally:
            self._running[job.pod] -= 1
            self._tasks.pop(job.id, None)
            if not self.closing:
                asyncio.get_running_loop().call_soon(self.pump)

    async def _send(self, job: Job) -> str | None:
        """Replay the job through the proxy and store its answer; an error text when it failed instead."""
        session, base_url = self._session, self._base_url
        assert session is not None and base_url is not None  # noqa: S101 - pump runs only after start
        headers: CIMultiDict[str] = CIMultiDict(job.headers)
        headers[JOB_TOKEN_HEADER] = self._token
        headers[JOB_ID_HEADER] = job.id  # the proxy marks it sent as the request leaves toward the pod
        if job.owner is not None:
            headers[JOB_OWNER_HEADER] = job.owner
        # Only what the client sent: no Content-Type or Content-Disposition of aiohttp's own for the file.
        skip = () if "Content-Type" in headers else ("Content-Type",)
        while True:
            with contextlib.ExitStack() as stack:
                body = None
                if job.request_bytes:
                    handle = stack.enter_context(open(self.store.body_path(job.id), "rb"))
                    body = aiohttp.payload.BufferedReaderPayload(handle, filename=None)  # streamed, with a length
                async with session.request(job.method, base_url + job.path, headers=headers, data=body,
                                           skip_auto_headers=skip, allow_redirects=False,
                                           ssl=self._ssl) as response:
                    code = response.headers.get(ERROR_HEADER)
                    if code is not None:
                        message = _error_message(await response.read())
                        if code in RETRIED_CODES and not self.closing:
                            delay = _retry_after(response.headers)
                            log.info("job %s: %s; asked again in %g s", _shown(job.id), code, delay)
                        else:
                            return message
                    else:
                        return await self._store_result(job, response)
            await self._sleep(delay)

    async def _store_result(self, job: Job, response: aiohttp.ClientResponse) -> str | None:
        result = self.store.result_path(job.id)
        part = result.with_name(result.name + ".part")
        written = 0
        # What jobs_max_bytes leaves once this job's request body (deleted when it finishes) is not counted.
        limit = self.store.max_bytes - (self.store.totals()[1] - job.request_bytes)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                    written += len(chunk)
                    if written > limit:
                        JobStore._unlink(part)
                        return (f"the response did not fit in what [proxy] jobs_max_bytes = {self.store.max_bytes} "
                                "leaves beside the other stored jobs; it was not kept")
                    write_fully(fd, chunk)
            finally:
                os.close(fd)
            os.replace(part, result)
            # The bytes as they came (the session does not decompress), so their Content-Encoding stays with them.
            headers = tuple((name, value) for name, value in response.headers.items()
                            if name.lower() not in _RESULT_HEADERS_DROPPED)
            self.store.finish(job.id, status=response.status, headers=headers, result_bytes=written)
        except (OSError, sqlite3.Error) as exc:
            if not _store_full(exc):
                raise
            JobStore._unlink(part)
            JobStore._unlink(result)
            log.warning("job %s: the disk holding %s is full; its response was not kept", _shown(job.id),
                        self.store.directory)
            return (f"the disk holding {self.store.directory} is full: the response (HTTP {response.status}) was "
                    "not kept")
        return None

    def sending(self, job_id: str) -> None:
        """A replay's request leaves toward its pod now: record it (a restart must not send it again), or
        refuse to send it when its job is no longer running (a stopping proxy queued it again)."""
        try:
            sent = self.store.mark_sent(job_id)
        except (sqlite3.Error, RuntimeError) as exc:  # a closed or failing store: not sent unrecorded
            log.warning("job %s: could not record its request as sent (%s); not sent", _shown(job_id),
                        type(exc).__name__)
            sent = False
        if not sent:
            raise ProxyError(503, "the job is no longer running (the proxy is stopping); it was not sent",
                             code="job_not_running", should_retry=False)

    # ---------------------------------------------------------------------------------- answers

    def shown_state(self, job: Job) -> str:
        """The state a client sees: a running job whose pod has no ready replica is waiting for its wake."""
        if job.state == JobState.RUNNING and self._pod_waking(job.pod):
            return "waking"
        return str(job.state)

    def document(self, job: Job) -> dict[str, Any]:
        """The status document of GET /rpm/v1/jobs/{id} (and of the 202)."""
        location = f"{JOBS_PATH}/{job.id}"
        document: dict[str, Any] = {
            "id": job.id, "object": "rpm.job", "state": self.shown_state(job), "pod": job.pod,
            "method": job.method, "path": job.path, "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
            "expires_at": _iso(job.expires_at), "status_url": location, "result_url": f"{location}/result"}
        if job.owner is not None:
            document["owner"] = job.owner
        if job.state == JobState.QUEUED:
            document["position"] = self.store.position(job)
        if job.state == JobState.FAILED:
            document["error"] = {"message": job.error, "code": "job_failed"}
        if job.state == JobState.DONE:
            document["response"] = self._response_summary(job)
        return document

    def _response_summary(self, job: Job) -> dict[str, Any]:
        headers = _header_dict(job.response_headers)
        summary: dict[str, Any] = {"status": job.status, "headers": headers, "bytes": job.result_bytes}
        content_type = headers.get("Content-Type", "")
        if job.result_bytes <= INLINE_BODY_MAX_BYTES and content_type.split(";")[0].strip().endswith("json"):
            with contextlib.suppress(OSError, ValueError):
                summary["body"] = json.loads(self.store.result_path(job.id).read_bytes())
        return summary

    def find(self, request: web.Request) -> Job:
        job_id = request.match_info["id"]
        job = self.store.get(job_id) if is_job_id(job_id) and self.unavailable is None else None
        principal = request.get(PRINCIPAL)
        if job is not None and principal is not None and not principal.is_admin and job.owner != principal.name:
            job = None  # another key's job: told apart from an unknown one by nothing
        if job is None:
            raise ProxyError(404, f"no job {job_id!r} here: unknown, deleted, or its result expired ([proxy] "
                             "jobs_result_ttl_seconds)", code="job_not_found", param="id", should_retry=False)
        return job

    def summary(self) -> dict[str, PodJobs]:
        return {} if self.unavailable is not None else self.store.summary()


def _store_full(exc: BaseException) -> bool:
    """A write the job store's disk had no room for: a file's (ENOSPC, EDQUOT, EFBIG) or sqlite's."""
    return is_disk_full(exc) or (isinstance(exc, sqlite3.Error)
                                 and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)


def _shown(job_id: str) -> str:
    """A job id as logs show it: enough to tell jobs apart, not the whole id that reads the job."""
    return job_id[:12] + "…"


def _too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"the request body is larger than {limit} bytes, the most this route takes ([proxy] "
                      "max_body_bytes; an http pod's own max_body_bytes under /pods/)",
                      code="body_too_large", should_retry=False)


def _retry_after(headers: Mapping[str, str]) -> float:
    with contextlib.suppress(ValueError):
        return max(0.05, int(headers.get("retry-after-ms", "")) / 1000)
    with contextlib.suppress(ValueError):
        return max(0.05, float(headers.get("Retry-After", "")))
    return 1.0


def _error_message(body: bytes) -> str:
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        return str(json.loads(body)["error"]["message"])
    return "the proxy could not send the request"


def _header_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in pairs:
        key = next((known for known in merged if known.lower() == name.lower()), name)
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------- handlers

JOBS = web.AppKey("rpm_jobs", JobRunner)


async def handle_job(request: web.Request) -> web.Response:
    """GET /rpm/v1/jobs/{id}: the job's status document."""
    runner = request.app[JOBS]
    return json_response(runner.document(runner.find(request)))


async def handle_result(request: web.Request) -> web.StreamResponse:
    """GET /rpm/v1/jobs/{id}/result: the stored response as the service gave it (status, headers, body).
    Not done yet: 202 with the status document and Retry-After; failed: 502 with the job's error."""
    runner = request.app[JOBS]
    job = runner.find(request)
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        return web.Response(status=202, body=json.dumps(runner.document(job)).encode(),
                            content_type="application/json", headers={"Retry-After": "1"})
    if job.state == JobState.FAILED:
        raise ProxyError(502, f"job {job.id} failed: {job.error}", code="job_failed", should_retry=False)
    path = runner.store.result_path(job.id)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the last write
    except FileNotFoundError:
        raise ProxyError(404, f"the result of job {job.id} is gone", code="job_not_found",
                         should_retry=False) from None
    with handle:
        headers: CIMultiDict[str] = CIMultiDict(job.response_headers)
        headers[JOB_ID_HEADER] = job.id
        response = web.StreamResponse(status=job.status or 200, headers=headers)
        response.content_length = job.result_bytes
        await response.prepare(request)
        while chunk := handle.read(_CHUNK_BYTES):
            await response.write(chunk)
    await response.write_eof()
    return response


async def handle_delete(request: web.Request) -> web.Response:
    """DELETE /rpm/v1/jobs/{id}: cancel a queued job, or drop a finished one and its result; 409 while it runs
    (its request is on its way to the service and cannot be called back)."""
    runner = request.app[JOBS]
    job = runner.find(request)
    if job.state == JobState.RUNNING:
        raise ProxyError(409, f"job {job.id} is running: its request may already have reached the service, so it "
                         "cannot be cancelled; wait for it to finish", code="job_running", should_retry=False)
    runner.store.delete(job.id)
    outcome = "cancelled" if job.state == JobState.QUEUED else "deleted"
    log.info("job %s %s", _shown(job.id), outcome)
    return json_response({"id": job.id, "object": "rpm.job", "state": outcome, "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get(JOBS_PATH + "/{id}", handle_job)
    app.router.add_get(JOBS_PATH + "/{id}/result", handle_result)
    app.router.add_delete(JOBS_PATH + "/{id}", handle_delete)
