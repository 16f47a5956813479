"""The request log: one JSON line per proxied request, in `<state dir>/logs/requests.jsonl` (0600, rotated).

`rpm report` and `rpm simulate --from-log` read it. Writing it costs the request path one tuple appended to
a deque (`RequestLog.append`): no formatting, no I/O, no lock. A daemon thread wakes every
FLUSH_INTERVAL_SECONDS (sooner when BATCH_LINES are waiting), turns the batch into JSON lines and writes
it with one `os.write` on an O_APPEND descriptor. The file's size is tracked in memory, so rotation — by
size, and at the first batch of a new UTC day — is decided once per batch without a `stat`. Rotated files
are `requests.jsonl.<UTC time>`; files not written to for `[proxy] request_log_keep_days` are deleted at
start and at each rotation (0 keeps none: nothing is written). `close()` writes what is left; the proxy
calls it on shutdown, so only a killed proxy loses its last half second.

A line holds the arrival time, the pod's config name and id, the model, the method, the route label
(`/v1/chat/completions`, or `/v1/other`: never the raw path, never a query string), the status, the
duration, the time to the first byte of the pod's answer, the request's own wait for a cold start
(`cold_start_s`) and the length of the wake it waited for since that wake began (`wake_s`: what
X-RPM-Cold-Start told; more than its own wait for a retry after a 503), the token counts of
the answer's `usage` (for streams when the client asked for `stream_options.include_usage`, or had a team
key: the proxy then asks for it), the cache outcome, the error code and the key's name (null without keys).
Never a header, a body or a key.

A crash can cut the last line short. The writer starts a new line when the file does not end with one,
and the reader skips any line that is not a JSON object, so one bad line never hides the others.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from runpod_manager.paths import ensure_private_dir, read_lines

log = logging.getLogger("runpod_manager.proxy")

FLUSH_INTERVAL_SECONDS = 0.5
BATCH_LINES = 1000  # a batch this long is written at once, not at the next interval
MAX_FILE_BYTES = 32 * 1024 * 1024  # ~100,000 lines: a file per day for anyone but a busy team
# Far above what the writer leaves in one file: a reader never loads a file someone made huge.
MAX_READ_BYTES = 4 * MAX_FILE_BYTES
USAGE_TAIL_BYTES = 4096  # vLLM puts `usage` at the end of an answer (and in a stream's last event)
MAX_MODEL_CHARS = 200
# Errors a request can end with while it waits for a wake: its wait is logged as its cold start.
WAKE_ERRORS = frozenset({"pod_waking", "queue_timeout", "limit_refused", "state_busy", "pod_not_ready",
                         "pod_stopped", "wake_failed", "client_gone", "proxy_stopped"})
# Cache outcomes of requests that reached `_serve_v1`: those count as activity for idle stop. Local answers
# (model lists, unknown models, refused methods) are "local" or "-".
ACTIVITY_CACHE = frozenset({"hit", "miss", "bypass"})
MODELS_ROUTE = "/v1/models"
# Route labels of the pass-through to a pod's service (/pods/<name>/…, a listen port): the proxy logs those only
# once the request has its pod, and there is no cache on that path, so their cache is always "-".
SERVICE_ROUTE_PREFIXES = ("/pods/", "listen:")


def proxied(cache: object, route: object, pod: object) -> bool:
    """Whether a logged request reached a pod or the cache (what idle stop counts as activity, and what `rpm
    report` and `rpm simulate --from-log` count): /v1's cache outcomes, and every pass-through request to a
    pod whatever its cache field. The one reading of a line's kind, for parsed lines and raw trace rows alike."""
    if route == MODELS_ROUTE:
        return False
    if cache in ACTIVITY_CACHE:
        return True
    return isinstance(pod, str) and isinstance(route, str) and route.startswith(SERVICE_ROUTE_PREFIXES)

# What the proxy appends per request, in this order (a plain tuple: the cheapest thing to build):
# ended_at (unix time), duration (s), pod (name; None: answered without a pod), pod_id, model (the
# request's `model`, any JSON value), stream (bool), method, route label, status, first_byte_after (s,
# None), cold_start (s, None: the request's own wait for a wake), wake_wait (s), cache, error code,
# usage_source (the answer's bytes, or a stream's last event, None), key (the name of the request's key, None
# without keys), wake (s, None: the length of the wake it waited for, from that wake's start).
RequestEntry = tuple[float, float, str | None, str | None, Any, bool, str, str, int, float | None, float | None,
                     float, str, str | None, bytes | None, str | None, float | None]


class RequestLog:
    """The writer. `append` is for the proxy's event loop; everything else runs on the flush thread or at
    start and close."""

    def __init__(self, path: Path, *, keep_days: int, max_file_bytes: int | None = None,
                 flush_interval_seconds: float | None = None, batch_lines: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.keep_days = keep_days
        self.enabled = keep_days > 0
        # None: the module's values as they are now (tests patch them for the proxy's own log).
        self.max_file_bytes = MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes
        self.flush_interval_seconds = FLUSH_INTERVAL_SECONDS if flush_interval_seconds is None else (
            flush_interval_seconds)
        self.batch_lines = BATCH_LINES if batch_lines is None else batch_lines
        self._clock = clock
        self._pending: deque[RequestEntry] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one writer: the thread, or flush()/close() from another thread
        self._fd: int | None = None
        self._size = 0
        self._day = ""
        self._failed = False  # a write failed: said once in the proxy log, not once per batch

    # ----------------------------------------------------------------------------------- hot path

    def append(self, entry: RequestEntry) -> None:
        """Queue one request's line. Thread-safe (deque.append is atomic); no I/O."""
        if not self.enabled:
            return
        pending = self._pending
        pending.append(entry)
        if len(pending) == self.batch_lines:
            self._wake.set()

    # ------------------------------------------------------------------------------- the writer

    def start(self) -> None:
        """Apply retention and start the flush thread (no thread when the log is off)."""
        with contextlib.suppress(OSError):
            prune(self.path, keep_days=self.keep_days, now=self._clock(), include_current=True)
        if not self.enabled or self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rpm-request-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval_seconds)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Stop the thread and write everything still queued. Idempotent."""
        self._stopping = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        self.flush()
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    def flush(self) -> None:
        """Write every queued entry now (one write per batch). Never raises: a log must not break the proxy."""
        with self._lock:
            pending = self._pending
            if not pending:
                return
            lines = []
            while pending:
                try:
                    entry = pending.popleft()
                except IndexError:  # pragma: no cover - only this thread takes from the left
                    break
                try:
                    lines.append(format_line(entry))
                except (TypeError, ValueError, OverflowError):  # one odd entry must not lose the batch
                    continue
            if lines:
                self._write(("\n".join(lines) + "\n").encode("utf-8"))

    def _write(self, data: bytes) -> None:
        try:
            now = self._clock()
            today = _utc_day(now)
            if self._fd is None:
                self._open(today)
            if self._size and (self._size + len(data) > self.max_file_bytes or today != self._day):
                self._rotate(now, today)
            assert self._fd is not None  # noqa: S101 - _open sets it or raises
            written = os.write(self._fd, data)
            while written < len(data):  # a regular file takes it all; a full disk raises instead
                written += os.write(self._fd, data[written:])
            self._size += len(data)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("could not write the request log %s: %s", self.path, exc.strerror or exc)
            self._failed = True
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    def _open(self, today: str) -> None:
        ensure_private_dir(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path))
            if info.st_mode & 0o077:  # left looser by hand
                os.fchmod(fd, 0o600)
            self._size = info.st_size
            self._day = _utc_day(info.st_mtime) if info.st_size else today
            if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
                os.write(fd, b"\n")  # the last line was cut short (a crash): the next one starts afresh
                self._size += 1
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _rotate(self, now: float, today: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        rotated = self.path.with_name(f"{self.path.name}.{stamp}")
        suffix = 0
        while rotated.exists():
            suffix += 1
            rotated = self.path.with_name(f"{self.path.name}.{stamp}-{suffix}")
        os.replace(self.path, rotated)
        prune(self.path, keep_days=self.keep_days, now=now)
        self._open(today)


def prune(path: Path, *, keep_days: int, now: float, include_current: bool = False) -> list[Path]:
    """Delete rotated request logs (and, with include_current, the current one) last written more than
    keep_days ago; return what was deleted."""
    cutoff = now - keep_days * 86400
    deleted = []
    for candidate in log_files(path):
        if candidate == path and not include_current:
            continue
        try:
            if candidate.lstat().st_mtime < cutoff or keep_days <= 0:
                candidate.unlink()
                deleted.append(candidate)
        except FileNotFoundError:
            continue
    return deleted


def log_files(path: Path) -> list[Path]:
    """The current log and its rotated files, oldest first (rotated names sort by time)."""
    try:
        rotated = sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + "."))
    except FileNotFoundError:
        return []
    return [*rotated, *([path] if path.exists() else [])]


# --------------------------------------------------------------------------------------------- lines


# The line, written by hand: json.dumps of a dict took three times as long, and this runs once per request.
# Every string goes through the json module's own C escaper, numbers through repr (valid JSON for finite
# floats); a test parses lines back with json.loads.
_LINE = ('{"time":"%s","pod":%s,"pod_id":%s,"model":%s,"method":%s,"route":%s,"status":%d,"duration_ms":%s,'
         '"ttfb_ms":%s,"cold_start_s":%s,"wake_s":%s,"tokens_in":%s,"tokens_out":%s,"stream":%s,"cache":%s,"error":%s,'
         '"key":%s}')


def format_line(entry: RequestEntry) -> str:
    """One entry as its JSON line (without the newline). Runs on the flush thread."""
    (ended_at, duration, pod, pod_id, model, stream, method, route, status, first_byte_after, cold_start,
     wake_wait, cache, error, usage_source, key, wake) = entry
    if cold_start is None and error in WAKE_ERRORS and wake_wait > 0:
        cold_start = wake_wait  # it waited for a wake and ended before the pod was ready
    tokens_in, tokens_out = usage_tokens(usage_source)
    return _LINE % (
        _iso(ended_at - duration), _text_json(pod), _text_json(pod_id),
        _text_json(model[:MAX_MODEL_CHARS] if isinstance(model, str) else None), _text_json(method),
        _text_json(route), status, _number_json(duration * 1000), _number_json(
            None if first_byte_after is None else first_byte_after * 1000), _number_json(cold_start),
        _number_json(wake),
        _int_json(tokens_in), _int_json(tokens_out), "true" if stream else "false", _text_json(cache),
        _text_json(error), _text_json(key))


def _text_json(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _number_json(value: float | None) -> str:
    return "null" if value is None or value != value else repr(round(value, 3))  # noqa: PLR0124 - NaN


def _int_json(value: int | None) -> str:
    return "null" if value is None else str(value)


_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def usage_tokens(source: bytes | None) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of the last `"usage"` in an answer's bytes, or Nones.

    Only the end of the answer is read: vLLM writes `usage` last (nothing after it counts tokens), and a
    stream's usage is its last event. Two regular expressions: parsing the JSON took twice as long."""
    if not source:
        return None, None
    tail = source[-USAGE_TAIL_BYTES:]
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None, None
    prompt = _PROMPT_TOKENS.search(tail, at)
    completion = _COMPLETION_TOKENS.search(tail, at)
    return (None if prompt is None else int(prompt.group(1)),
            None if completion is None else int(completion.group(1)))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


_second_text: tuple[int, str] = (0, "1970-01-01T00:00:00")  # most lines of a batch share their second


def _iso(epoch_seconds: float) -> str:
    global _second_text  # noqa: PLW0603 - a one-entry cache; a tuple is swapped whole, so threads never mix
    second = int(epoch_seconds // 1)
    cached = _second_text
    if cached[0] != second:
        cached = _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((epoch_seconds - second) * 1000):03d}Z"


def _utc_day(epoch_seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_seconds))


# -------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One line of the request log, as `rpm report` and `rpm simulate --from-log` read it."""

    at: float  # arrival, unix time
    pod: str | None
    pod_id: str | None
    model: str | None
    route: str
    status: int
    duration_seconds: float
    ttfb_seconds: float | None
    cold_start_seconds: float | None  # the request's own wait for a wake
    tokens_in: int | None
    tokens_out: int | None
    cache: str
    error: str | None
    key: str | None
    wake_seconds: float | None = None  # the wake it waited for, from that wake's start (older logs: None)

    @property
    def felt_wait_seconds(self) -> float | None:
        """The cold start this request's caller felt: the whole wake it waited for (a retry after a 503 joined
        it late), or its own wait in a log written before wake_s."""
        return self.cold_start_seconds if self.wake_seconds is None else self.wake_seconds

    @property
    def activity(self) -> bool:
        """Whether it counted as activity for idle stop (reached the pod or the cache), as the proxy counts it."""
        return proxied(self.cache, self.route, self.pod)

    @property
    def ended_at(self) -> float:
        return self.at + self.duration_seconds


def read_requests(path: Path, *, since: float | None = None, until: float | None = None,
                  pod: str | None = None) -> list[LoggedRequest]:
    """Every readable line of the log and its rotated files with since <= arrival < until, in arrival order.
    Lines that do not parse (a crash's partial line, hand edits) are skipped."""
    requests: list[LoggedRequest] = []
    for file in log_files(path):
        try:
            if since is not None and file.stat().st_mtime < since:
                continue  # last written before the window: every line in it is older
        except FileNotFoundError:
            continue
        for line in read_lines(file, max_bytes=MAX_READ_BYTES):
            record = parse_line(line)
            if record is None or (since is not None and record.at < since) or (
                    until is not None and record.at >= until) or (pod is not None and record.pod != pod):
                continue
            requests.append(record)
    requests.sort(key=lambda request: request.at)
    return requests


def parse_line(line: bytes) -> LoggedRequest | None:
    """A line as a LoggedRequest, or None when it is not one (partial, foreign, hand-edited)."""
    try:
        document = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    try:
        at = datetime.fromisoformat(document["time"].replace("Z", "+00:00")).timestamp()
        status = document["status"]
        duration_ms = document["duration_ms"]
        if not isinstance(status, int) or not _is_number(duration_ms) or duration_ms < 0:
            return None
        return LoggedRequest(
            at=at, pod=_text(document.get("pod")), pod_id=_text(document.get("pod_id")),
            model=_text(document.get("model")), route=_text(document.get("route")) or "other", status=status,
            duration_seconds=duration_ms / 1000, ttfb_seconds=_seconds(document.get("ttfb_ms"), 1000),
            cold_start_seconds=_seconds(document.get("cold_start_s"), 1),
            tokens_in=_count(document.get("tokens_in")), tokens_out=_count(document.get("tokens_out")),
            cache=_text(document.get("cache")) or "-", error=_text(document.get("error")),
            key=_text(document.get("key")), wake_seconds=_seconds(document.get("wake_s"), 1))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # noqa: PLR0124 - NaN


def _seconds(value: Any, per_second: float) -> float | None:
    return value / per_second if _is_number(value) and value >= 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
