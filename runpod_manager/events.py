"""The event log: one JSON line per action with its reason, in the state directory, rotated.

Secrets never reach it: callers pass ids, names, statuses and reasons, and `redact()` masks anything that
looks like a bearer token or an API key as a last line of defence.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runpod_manager.paths import ensure_private_dir, open_private_log

MAX_LOG_BYTES = 2 * 1024 * 1024
KEEP_ROTATED = 3
TAIL_BYTES = 256 * 1024  # far more than the events `status` shows
_SECRET_RE = re.compile(r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+)([A-Za-z0-9._~+/=-]{8,})")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_RE.sub(lambda m: m.group(1) + "***", text)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


class EventLog:
    def __init__(self, path: Path, *, clock: Callable[[], datetime] | None = None,
                 secrets: tuple[str, ...] = ()) -> None:
        self.path = path
        self._clock = clock or (lambda: datetime.now(UTC))
        self._secrets = secrets

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": self._clock().isoformat().replace("+00:00", "Z"), "event": event, "pid": os.getpid()}
        record.update({k: v for k, v in fields.items() if v is not None})
        line = redact(json.dumps(record, default=_json_value, sort_keys=False), self._secrets)
        with contextlib.suppress(OSError):  # logging must never break enforcement
            ensure_private_dir(self.path.parent)
            self._rotate_if_needed()
            fd = open_private_log(self.path)  # never through a symlink (an event is lost, nothing else)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def _rotate_if_needed(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < MAX_LOG_BYTES:
            return
        for index in range(KEEP_ROTATED - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def tail(self, limit: int = 20) -> list[dict[str, Any]]:
        """The last `limit` events. Reads only the end of the file: it is bounded by rotation only when rpm
        wrote it, and a symlink to /dev/zero must not fill the memory."""
        return self._window()[0][-limit:] if limit > 0 else []

    def page(self, since: datetime | None, limit: int) -> EventPage:
        """Events after `since` (oldest first, at most `limit`, so a reader pages forward with the last one's
        time), or the last `limit` events without `since`. Read from the end of the current file only
        (TAIL_BYTES; `complete` says whether that reached its start)."""
        events, complete = self._window()
        if since is None:
            return EventPage(events=events[-limit:], more=len(events) > limit, complete=complete)
        after = [event for event in events if (_event_time(event) or since) > since]
        return EventPage(events=after[:limit], more=len(after) > limit, complete=complete)

    def _window(self) -> tuple[list[dict[str, Any]], bool]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return [], True
        with os.fdopen(fd, "rb") as handle:
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    return [], True
                start = max(0, info.st_size - TAIL_BYTES)
                handle.seek(start)
                text = handle.read(TAIL_BYTES).decode("utf-8", errors="replace")
            except OSError:
                return [], True
        lines = text.splitlines()
        if start > 0 and lines:
            lines = lines[1:]  # the first line of a window that starts mid-file is cut
        events = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events, start == 0


def log_files(path: Path) -> list[Path]:
    """The log and the rotated files `EventLog.write` keeps, oldest first (path.3 … path.1, then path)."""
    return [path.with_name(f"{path.name}.{index}") for index in range(KEEP_ROTATED, 0, -1)] + [path]


@dataclass(frozen=True)
class EventPage:
    events: list[dict[str, Any]]
    more: bool  # more events match than were returned
    complete: bool  # the window read reached the start of the log file


def _event_time(event: dict[str, Any]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(event.get("time")))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
