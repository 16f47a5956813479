"""pod_state.json: the versioned record of the pods rpm owns, written so it cannot be half-written.

Layout: `{"version": N, "install_id": id, "pods": {config_name: record}}`. The file is 0600 in a 0700
directory, written to a temp file in the same directory, fsynced and renamed. Every read-modify-write holds
the file lock (`StateStore.transaction`). A corrupt file is moved aside as `.corrupt-<time>` and reported; a file from
a newer rpm is refused; older versions are upgraded by the named steps in `UPGRADES`.

The record holds the upstream key (the pod's vLLM key), which is why the file is private.

The install id is this state directory's identity at RunPod: made once (with the file, or by the upgrade to
version 3), carried in the name of every pod this install creates (`podspec.new_pod_name`), and the only
proof a sweep accepts that an unrecorded pod is this install's (DESIGN.md: one install, one identity).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import filelock

from runpod_manager import backends, display
from runpod_manager.errors import ConfigError, LockBusy, StateError
from runpod_manager.paths import (
    FileTooLarge,
    NotRegularFile,
    Paths,
    ensure_private_dir,
    read_regular_file,
    write_private_file,
)

STATE_VERSION = 4
# 8 lowercase base32 characters (40 random bits): short enough for a pod's name, and two installs on one
# account sharing one by chance is a one-in-a-trillion event.
INSTALL_ID_RE = re.compile(r"^[a-z2-7]{8}$")

# The range of what rpm ever writes. A value outside it is a hand edit, a broken clock or another program:
# acting on it would disable a limit (every comparison with NaN is false, so a NaN spend never reaches the
# cap) or crash every command (a date at datetime's edge overflows when a limit or a time zone is applied).
# Between EARLIEST and LATEST, adding any duration rpm allows (a year at most) or any zone offset stays
# inside datetime's range.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_USD = 1e9  # no pod, nor a day of pods, costs a billion dollars; above this a figure is garbage
# A lease ends at opened + runtime_seconds or the next daily cutoff; the config caps durations at 366 days.
MAX_LEASE = timedelta(days=366)
# A record is about 1.5 KB; a file past this many bytes is not one rpm wrote.
MAX_STATE_BYTES = 16 * 1024 * 1024


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a timestamp string")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if not EARLIEST <= parsed < LATEST:
        raise ValueError(f"{what} {value!r} is out of range ({EARLIEST.year} to {LATEST.year - 1})")
    return parsed


def _parse_day(value: Any, what: str) -> str | None:
    """A local date as rpm writes it (YYYY-MM-DD), in range."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a date string or null")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a date (YYYY-MM-DD)") from None
    if not EARLIEST.date() <= day < LATEST.date() or day.isoformat() != value:
        raise ValueError(f"{what} {value!r} is out of range ({EARLIEST.year} to {LATEST.year - 1})")
    return value


def _number(value: Any, what: str, *, low: float, high: float) -> float:
    """A finite JSON number within [low, high]. Strings and booleans are the wrong type, not numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError(f"{what} is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} is {number}, not a finite number")
    if not low <= number <= high:
        raise ValueError(f"{what} {number:g} is out of range ({low:g} to {high:g})")
    return number


@dataclass
class Lease:
    """Permission for a pod to exist and run: opened by `rpm start` or a wake, closed by a limit or shutdown."""

    opened_at: datetime
    deadline: datetime
    opened_by: str = "start"  # start | wake | recovery

    def to_json(self) -> dict[str, Any]:
        return {"opened_at": _iso(self.opened_at), "deadline": _iso(self.deadline), "opened_by": self.opened_by}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        opened, deadline = _parse(data["opened_at"], "opened_at"), _parse(data["deadline"], "deadline")
        if opened is None or deadline is None:
            raise ValueError("a lease needs opened_at and deadline")
        if not opened <= deadline <= opened + MAX_LEASE:
            # Such a lease would outlive every limit (or end before it began): no rpm opened it.
            raise ValueError(f"the lease's deadline must fall within {MAX_LEASE.days} days after opened_at")
        return cls(opened_at=opened, deadline=deadline, opened_by=str(data.get("opened_by", "start")))


@dataclass
class Intent:
    """A create about to be sent: saved before the call so a crash can be recovered by name."""

    pod_name: str
    created_at: datetime
    purpose: str = "create"  # create | replace

    def to_json(self) -> dict[str, Any]:
        return {"pod_name": self.pod_name, "created_at": _iso(self.created_at), "purpose": self.purpose}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Intent:
        created = _parse(data["created_at"], "created_at")
        if created is None:
            raise ValueError("an intent needs created_at")
        return cls(pod_name=str(data["pod_name"]), created_at=created, purpose=str(data.get("purpose", "create")))


_TIME_KEYS = ("last_activity_at", "last_gpu_busy_at", "spend_accounted_at",
              "billing_checked_at")
_USD_KEYS = ("cost_per_hour", "spend_usd", "spend_of_ended_pods_usd", "billed_usd")
_DAY_KEYS = ("spend_day", "spend_cap_day")


@dataclass
class PodRecord:
    """What rpm knows about the pod of one config."""

    config_name: str
    pod_id: str | None = None
    pod_name: str | None = None
    upstream_key: str | None = field(default=None, repr=False)
    lease: Lease | None = None
    intent: Intent | None = None
    last_activity_at: datetime | None = None
    gpu_type_id: str | None = None
    data_center_id: str | None = None
    cost_per_hour: float = 0.0
    last_status: str | None = None
    spend_day: str | None = None  # the local date (YYYY-MM-DD) spend_usd belongs to
    spend_usd: float = 0.0  # spend of the day by pods of this config that are gone (billing of live pods adds)
    # The day the cap was hit (a record of it; the refusal itself is the day's spend against the cap in force).
    spend_cap_day: str | None = None
    replacing_pod_id: str | None = None  # old pod kept until its replacement is ready
    last_action: str | None = None
    last_reason: str | None = None
    last_lease_end_reason: str | None = None
    lease_end_action: str | None = None  # stop | terminate: what ending the last lease did to the pod
    proxy_wanted: bool = False  # `rpm start` launched the proxy; it should run while the lease is open
    last_gpu_busy_at: datetime | None = None
    ready_pod_id: str | None = None  # the pod verified ready (RUNNING and /v1/models answering)
    last_sweep_at_epoch: float | None = None  # last time the pods were listed for intents and orphans
    spend_accounted_at: datetime | None = None  # spend_usd counts cost × time up to here
    spend_of_ended_pods_usd: float = 0.0  # part of spend_usd from pods before the current one
    billed_usd: float = 0.0  # billing's figure for the current pod today
    billing_checked_at: datetime | None = None
    api_base_url: str | None = None  # the RunPod API (account) the pod, lease and intent belong to
    # ISO start of the warm_hours window a lease was opened (or already open) for: one warm lease per window,
    # so a limit or a shutdown that closes it inside the window is not undone by the next pass.
    warm_opened_for: str | None = None
    backend: str = backends.POD  # how the entry runs on RunPod (backends.NAMES); `kind` is its protocol

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lease"] = self.lease.to_json() if self.lease else None
        data["intent"] = self.intent.to_json() if self.intent else None
        for key in _TIME_KEYS:
            data[key] = _iso(getattr(self, key))
        return data

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> PodRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["config_name"] = name
        values["lease"] = Lease.from_json(data["lease"]) if data.get("lease") else None
        values["intent"] = Intent.from_json(data["intent"]) if data.get("intent") else None
        for key in _TIME_KEYS:
            values[key] = _parse(data.get(key), key)
        for key in _USD_KEYS:
            value = data.get(key)
            values[key] = 0.0 if value is None else _number(value, key, low=0.0, high=MAX_USD)
        for key in _DAY_KEYS:
            values[key] = _parse_day(data.get(key), key)
        _check_record_types(values)
        return cls(**values)

    @property
    def ready(self) -> bool:
        """The record's pod was verified ready (RUNNING and its model server answering) and still is."""
        return self.pod_id is not None and self.ready_pod_id == self.pod_id

    def bind_api(self, base_url: str, state_path: Path) -> None:
        """State belongs to one RunPod API (account): a record holding a pod, an intent or a lease of another
        is refused (ConfigError, exit 2), never acted upon, where a 404 from the wrong API would silently
        drop its pod. A record holding nothing takes the API it is used with. The API is known by its shown
        URL (`display.url`: a key in the URL's userinfo or query never reaches the file or a message)."""
        current = display.url(base_url)
        kept = display.url(self.api_base_url) if self.api_base_url else None  # an older rpm stored it whole
        if kept and kept != current and self.holds_something:
            held = f"pod {self.pod_id}" if self.pod_id else "an open lease"
            raise ConfigError(
                f"the state of config '{self.config_name}' ({state_path}) holds {held} at RunPod API "
                f"{kept}, but this run talks to {current}; nothing was changed",
                hint=f"run rpm with RUNPOD_API_URL={kept} (e.g. `rpm shutdown`) first, or use "
                     "another RPM_HOME for the other API")
        self.api_base_url = current

    @property
    def holds_something(self) -> bool:
        """A pod, a pending create or an open lease: what ties the record to one RunPod account."""
        return bool(self.pod_id or self.intent or self.replacing_pod_id or self.lease)


# The JSON types of the plain fields (the rest are parsed above): a record of the right names but the wrong
# types (`"pod_id": ["x"]`, `"proxy_wanted": "no"`) is corrupt, not something to act on.
_OPTIONAL_TEXT = frozenset(name for name, hint in typing.get_type_hints(PodRecord).items() if hint == str | None)


def _check_record_types(values: dict[str, Any]) -> None:
    for key in _OPTIONAL_TEXT & values.keys():
        if values[key] is not None and not isinstance(values[key], str):
            raise ValueError(f"{key} must be a string or null")
    if not isinstance(values.get("proxy_wanted", False), bool):
        raise ValueError("proxy_wanted must be true or false")
    if values.get("backend", backends.POD) not in backends.NAMES:
        raise ValueError(f"backend must be one of {', '.join(backends.NAMES)}")
    sweep = values.get("last_sweep_at_epoch")
    if sweep is not None:
        values["last_sweep_at_epoch"] = _number(sweep, "last_sweep_at_epoch", low=EARLIEST.timestamp(),
                                                high=LATEST.timestamp())


_INSTALL_ID_FIELD = re.compile(rb'"install_id"\s*:\s*"([a-z2-7]{8})"')


def salvaged_install_id(raw: bytes) -> str | None:
    """The install id a corrupt state file still shows (its first), or None. A new id would make this install's
    pods on RunPod another install's, which no sweep of it would ever end."""
    found = _INSTALL_ID_FIELD.search(raw)
    return None if found is None else found.group(1).decode("ascii")


def new_install_id() -> str:
    """A fresh install id (see the module docstring); made once per state directory."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


@dataclass
class State:
    pods: dict[str, PodRecord] = field(default_factory=dict)
    # A state that is not on disk yet gets its id here; it is saved before any pod is named with it (a create
    # saves its intent first), so an id no file holds never reaches RunPod.
    install_id: str = field(default_factory=new_install_id)

    def record(self, config_name: str) -> PodRecord:
        """The record of a config, created empty when absent."""
        if config_name not in self.pods:
            self.pods[config_name] = PodRecord(config_name=config_name)
        return self.pods[config_name]

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "install_id": self.install_id,
                "pods": {name: rec.to_json() for name, rec in self.pods.items()}}


# --------------------------------------------------------------------------------------------- upgrades


def _upgrade_1_to_2(document: dict[str, Any]) -> dict[str, Any]:
    """v1 kept one flat record per config with `pod_id`, `started_at` and `runtime_seconds`.

    v2 expresses the same as a lease with an explicit deadline.
    """
    for record in document.get("pods", {}).values():
        started, runtime = record.pop("started_at", None), record.pop("runtime_seconds", None)
        if started and runtime and not record.get("lease"):
            opened = _parse(started, "started_at")
            assert opened is not None  # noqa: S101
            deadline = datetime.fromtimestamp(opened.timestamp() + float(runtime), UTC)
            record["lease"] = {"opened_at": _iso(opened), "deadline": _iso(deadline), "opened_by": "start"}
    document["version"] = 2
    return document


def _upgrade_2_to_3(document: dict[str, Any]) -> dict[str, Any]:
    """v3 gives the state directory its install id, made here once. The pods its records hold keep their
    older names (`rpm-<name>-<random>`): they stay this install's by their ids, never by their names."""
    document["install_id"] = new_install_id()
    document["version"] = 3
    return document


def _upgrade_3_to_4(document: dict[str, Any]) -> dict[str, Any]:
    """v4 records carry their backend (`backends.NAMES`): every record before it was a pod's."""
    for record in document.get("pods", {}).values():
        if isinstance(record, dict):  # anything else is corrupt, and said so by decode_state
            record["backend"] = backends.POD
    document["version"] = 4
    return document


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3,
                                                                   3: _upgrade_3_to_4}


def decode_state(text: str) -> State:
    """Parse and upgrade a state document. ValueError (with a reason) when it is not a valid state."""
    document = json.loads(text)
    version = document.get("version") if isinstance(document, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
        raise _NewerVersion(version)  # before the layout: a newer rpm may have changed it
    if not isinstance(document, dict) or not isinstance(document.get("pods", {}), dict):
        raise ValueError("expected {\"version\": N, \"pods\": {...}}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError("missing or invalid 'version'")
    while version < STATE_VERSION:
        step = UPGRADES[version]
        try:
            document = step(document)
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:  # a malformed old record
            raise ValueError(f"cannot upgrade from version {version} ({exc})") from None
        version = document["version"]
    pods = {}
    for name, data in document.get("pods", {}).items():
        if not isinstance(data, dict):
            raise ValueError(f"record {name!r} is not an object")
        try:
            pods[name] = PodRecord.from_json(name, data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"record {name!r} is invalid ({exc})") from None
    where = _non_finite(document)  # in fields this rpm does not know (json.loads accepts NaN and Infinity)
    if where is not None:
        raise ValueError(f"{where} is not a finite number")
    install_id = document.get("install_id")
    if not isinstance(install_id, str) or not INSTALL_ID_RE.match(install_id):
        raise ValueError("missing or invalid 'install_id' (8 characters a-z, 2-7)")
    return State(pods=pods, install_id=install_id)


def _non_finite(document: Any) -> str | None:
    """The path of the first NaN or ±Infinity in a parsed JSON document, or None. Iterative: the document may
    be as deep as json.loads allows."""
    stack: list[tuple[str, Any]] = [("$", document)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where
        if isinstance(value, dict):
            stack.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{index}]", item) for index, item in enumerate(value))
    return None


class _NewerVersion(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


# ------------------------------------------------------------------------------------------------ store


class StateStore:
    """Reads and writes pod_state.json under the lock."""

    def __init__(self, paths: Paths, *, clock: Callable[[], float] = time.time) -> None:
        self.paths = paths
        self._clock = clock
        self._lock = filelock.FileLock(str(paths.lock_file), mode=0o600)
        self.notices: list[str] = []  # one-line reports (e.g. a corrupt file moved aside) for the renderer

    @property
    def path(self) -> Path:
        return self.paths.state_file

    def take_notices(self) -> list[str]:
        """The notices gathered so far (a corrupt file moved aside...), handed over once to the renderer."""
        notices, self.notices = self.notices, []
        return notices

    @contextlib.contextmanager
    def lock(self, *, wait_seconds: float | None = 10.0) -> Iterator[None]:
        """Hold the state lock. wait_seconds=0 tries once (cron); None waits forever."""
        ensure_private_dir(self.paths.state_dir)
        timeout = -1 if wait_seconds is None else wait_seconds
        try:
            self._lock.acquire(timeout=timeout, blocking=wait_seconds != 0)
        except filelock.Timeout:
            holder = self._holder_pid()
            who = f"process {holder}" if holder else "another rpm process"
            raise LockBusy(f"state is locked by {who} ({self.paths.lock_file})", holder_pid=holder,
                           hint="wait for it to finish, or stop it") from None
        # filelock is reentrant: only the outermost lock() of this process writes and clears the pid.
        outermost = self._lock.lock_counter == 1
        try:
            if outermost:
                self._write_holder_pid()
            yield
        finally:
            if outermost:
                self._clear_holder_pid()
            self._lock.release()

    @contextlib.contextmanager
    def transaction(self, *, wait_seconds: float | None = 10.0) -> Iterator[State]:
        """Lock, load, yield the state for modification, save on success."""
        with self.lock(wait_seconds=wait_seconds):
            state = self.load()
            yield state
            self.save(state)

    def load(self) -> State:
        path = self.path
        try:
            raw = read_regular_file(path, max_bytes=MAX_STATE_BYTES)
        except FileNotFoundError:
            return State()
        except (NotRegularFile, FileTooLarge) as exc:
            # Not something rpm wrote (it writes small regular files): left in place for the user to look at.
            raise StateError(f"{path}: cannot read state ({exc.strerror})",
                             hint="rpm writes it as a small regular file; move this one away") from None
        except OSError as exc:
            raise StateError(f"{path}: cannot read state ({exc.strerror})",
                             hint="check the file's owner and permissions") from None
        try:
            # Decoded here, not by read_text, so bytes that are not UTF-8 count as corrupt.
            return decode_state(raw.decode("utf-8"))
        except _NewerVersion as newer:
            raise StateError(f"{path}: written by a newer rpm (state version {newer.version}, this rpm reads "
                             f"up to {STATE_VERSION})", hint="upgrade rpm; the file was left as it is") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: `[[[[…` thousands deep
            aside = self._move_aside(path)
            kept = salvaged_install_id(raw)
            self.notices.append(f"{path} was corrupt ({_short(exc)}); moved aside to {aside.name}, "
                                f"starting from an empty state" + (f" with its install id {kept}" if kept else ""))
            if kept is None:
                return State()
            fresh = State(install_id=kept)
            with contextlib.suppress(OSError, StateError):  # written now, so the next load keeps it too
                self.save(fresh)
            return fresh

    def save(self, state: State) -> None:
        """Write the state atomically, 0600. Refuses (StateError, the file left as it was) a state that the next
        load would find corrupt: moving it aside then would forget the pods it names."""
        document = state.to_json()
        try:
            payload = json.dumps(document, indent=2, sort_keys=True).encode("utf-8")
            decode_state(payload.decode("utf-8"))  # names the field of a NaN, a negative amount, a year 9999
        except ValueError as exc:
            raise StateError(f"{self.path}: not saved: {_short(exc)}",
                             hint="the file on disk was left as it was; this is a bug in rpm, please report it"
                             ) from None
        directory = ensure_private_dir(self.paths.state_dir)
        fd, tmp_name = tempfile.mkstemp(prefix=".pod_state.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(directory)

    def _move_aside(self, path: Path) -> Path:
        stamp = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        counter = 1
        while target.exists():
            target = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
            counter += 1
        os.replace(path, target)
        return target

    @property
    def _holder_file(self) -> Path:
        return self.paths.state_dir / "lock.pid"

    def _write_holder_pid(self) -> None:
        with contextlib.suppress(OSError):
            write_private_file(self._holder_file, str(os.getpid()).encode("ascii"))

    def _clear_holder_pid(self) -> None:
        with contextlib.suppress(OSError):
            self._holder_file.unlink()

    def _holder_pid(self) -> int | None:
        try:
            return int(read_regular_file(self._holder_file, max_bytes=64).decode("ascii").strip())
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
            return None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
