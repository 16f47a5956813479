"""Team keys: the hashed store, roles, scopes and limits (used by the proxy and `rpm keys`).

A key is a long random token (`rpm_` + 43 URL-safe characters, 256 bits) shown once, at creation. The store
(`<state dir>/keys.json`, 0600, written whole under its own file lock) holds only HMAC-SHA256(store secret,
token) of each key, with a per-store random secret. A slow password hash (argon2, bcrypt) would cost
milliseconds per request and protect nothing here: it exists to make guessing a low-entropy password slow,
and a 256-bit random token cannot be guessed. HMAC with a secret also means a copied hash alone cannot be
checked against candidate tokens without the secret. A lookup is one HMAC of the presented token (~1 µs)
and one dict lookup by that digest: nothing about the stored keys can be learned from its timing, since the
digest an attacker's token maps to is unpredictable without the store's secret.

`[proxy] api_keys` from the config are keys too: unscoped user keys without limits (`Principal.source` is
"config"), so configs written before the store keep working.

A revoked key stays in the store (marked `revoked_at`) so its usage stays in the report and its name cannot
be reused by mistake. Usage counters (requests, tokens, spend per key per day) live in `key_usage.json`,
written by the proxy (proxy/limits.py) and read by `rpm keys usage`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runpod_manager.errors import LockBusy, StateError, UsageError
from runpod_manager.paths import ensure_private_dir, read_regular_file, write_private_file

if TYPE_CHECKING:
    from runpod_manager.config import Config
    from runpod_manager.paths import Paths

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")
STORE_VERSION = 1
USAGE_VERSION = 1
TOKEN_PREFIX = "rpm_"  # noqa: S105 - the visible prefix of every token (secret scanners can match it)
_MAX_STORE_BYTES = 16 * 1024 * 1024
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NAME_RULE = "1-63 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
_DURATION_RE = re.compile(r"^(\d+)([mhdw])$")
_DURATION_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LOCK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits; None is no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    daily_budget_usd: float | None = None

    @functools.cached_property  # read per request
    def any(self) -> bool:
        return any(value is not None for value in (self.requests_per_minute, self.tokens_per_minute,
                                                  self.max_concurrent, self.daily_budget_usd))


NO_LIMITS = KeyLimits()


@dataclass(frozen=True)
class Principal:
    """Who a request is, as the proxy resolved its key: what handlers read from `request[PRINCIPAL]`
    (proxy/auth.py) to decide what the request may do.

    `pods`/`models` None means every pod / every model. `role` "admin" may manage (the management API's
    checks); a "user" key may only use what its scopes allow. `source` is "store" (`rpm keys`) or "config"
    (`[proxy] api_keys`, unscoped users named `config-key-<n>`).
    """

    name: str
    role: Role = "user"
    pods: frozenset[str] | None = None
    models: frozenset[str] | None = None
    limits: KeyLimits = NO_LIMITS
    expires_at: float | None = None  # epoch seconds
    source: Literal["store", "config"] = "store"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use_pod(self, pod: str) -> bool:
        return self.pods is None or pod in self.pods

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored (never its token)."""

    name: str
    digest: str = field(repr=False)  # HMAC-SHA256(store secret, token), hex
    role: Role = "user"
    pods: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    limits: KeyLimits = NO_LIMITS
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None

    def principal(self) -> Principal:
        return Principal(name=self.name, role=self.role,
                         pods=None if self.pods is None else frozenset(self.pods),
                         models=None if self.models is None else frozenset(self.models),
                         limits=self.limits, expires_at=self.expires_at)

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


@dataclass(frozen=True)
class StoreDocument:
    secret: bytes = field(repr=False)
    keys: tuple[KeyRecord, ...] = ()

    def named(self, name: str) -> KeyRecord | None:
        return next((record for record in self.keys if record.name == name), None)


@dataclass(frozen=True)
class CreatedKey:
    record: KeyRecord
    token: str = field(repr=False)  # shown once, never stored


def digest_of(secret: bytes, token: str) -> str:
    return hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------ input rules


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"invalid key name {name!r}: {NAME_RULE}")
    if name.startswith("config-key-"):
        raise UsageError(f"invalid key name {name!r}: names starting with 'config-key-' are the "
                         "[proxy] api_keys of the config")
    return name


def parse_role(text: str) -> Role:
    for role in ROLES:
        if text == role:
            return role
    raise UsageError(f"invalid --role {text!r}: use {' or '.join(ROLES)}")


def parse_expires(text: str, now: datetime) -> float:
    """`--expires`: a duration from now (`90m`, `12h`, `30d`, `2w`) or a date (`2027-01-31`: the key works
    through that day, UTC) or an ISO 8601 time with a zone (`2027-01-31T18:00:00Z`). Epoch seconds."""
    text = text.strip()
    match = _DURATION_RE.match(text)
    if match:
        amount = int(match.group(1))
        if amount <= 0:
            raise UsageError(f"invalid --expires {text!r}: a duration must be positive")
        return now.timestamp() + amount * _DURATION_UNIT_SECONDS[match.group(2)]
    moment: datetime
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise UsageError(f"invalid --expires {text!r}: give the time's zone (e.g. 2027-01-31T18:00:00Z)")
    except ValueError:
        raise UsageError(f"invalid --expires {text!r}: use a duration (90m, 12h, 30d, 2w), a date (2027-01-31) "
                         "or an ISO time with a zone (2027-01-31T18:00:00Z)") from None
    if moment.timestamp() <= now.timestamp():
        raise UsageError(f"invalid --expires {text!r}: that is in the past")
    return moment.timestamp()


def check_scope(kind: str, wanted: Iterable[str], known: Iterable[str]) -> tuple[str, ...] | None:
    """--pods/--models: each name must be the config's; none given is every one (None)."""
    names = tuple(dict.fromkeys(name.strip() for item in wanted for name in item.split(",") if name.strip()))
    if not names:
        return None
    known_names = tuple(known)
    unknown = [name for name in names if name not in known_names]
    if unknown:
        raise UsageError(f"unknown {kind} {', '.join(unknown)} in --{kind}: the config's {kind} are "
                         f"{', '.join(known_names) or '(none)'}")
    return names


# ------------------------------------------------------------------------------------------ the store


class KeyStore:
    """`keys.json` in the state directory: read whole, written whole (0600, atomic) under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def load(self) -> StoreDocument | None:
        """The store, or None when there is none yet. StateError naming the file when it is damaged."""
        try:
            raw = read_regular_file(self.path, max_bytes=_MAX_STORE_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the key store {self.path}: {exc.strerror or exc}") from None
        try:
            return _parse_store(json.loads(raw))
        except (ValueError, TypeError, KeyError) as exc:
            raise StateError(f"the key store {self.path} is damaged ({exc}); move it aside and create the keys "
                             "again") from None

    def create(self, name: str, *, role: Role = "user", pods: tuple[str, ...] | None = None,
               models: tuple[str, ...] | None = None, limits: KeyLimits = NO_LIMITS,
               expires_at: float | None = None, now: float) -> CreatedKey:
        check_name(name)
        with self._locked():
            document = self.load() or StoreDocument(secret=secrets.token_bytes(32))
            if document.named(name) is not None:
                raise UsageError(f"a key named {name!r} exists already (revoked keys keep their names, so their "
                                 "usage stays theirs); choose another name")
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            record = KeyRecord(name=name, digest=digest_of(document.secret, token), role=role, pods=pods,
                               models=models, limits=limits, created_at=now, expires_at=expires_at)
            self._save(replace(document, keys=(*document.keys, record)))
        return CreatedKey(record=record, token=token)

    def revoke(self, name: str, *, now: float) -> KeyRecord:
        with self._locked():
            document = self.load()
            record = None if document is None else document.named(name)
            if document is None or record is None:
                known = ", ".join(r.name for r in document.keys) if document else ""
                raise UsageError(f"no key named {name!r}; the keys are {known or '(none)'}")
            if record.revoked_at is not None:
                return record
            revoked = replace(record, revoked_at=now)
            self._save(replace(document, keys=tuple(revoked if r.name == name else r for r in document.keys)))
        return revoked

    def records(self) -> tuple[KeyRecord, ...]:
        document = self.load()
        return () if document is None else document.keys

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        ensure_private_dir(self.path.parent)
        lock = FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT_SECONDS, mode=0o600)
        try:
            lock.acquire()
        except Timeout:
            raise LockBusy(f"the key store {self.lock_path} is locked by another rpm process") from None
        try:
            yield
        finally:
            lock.release()

    def _save(self, document: StoreDocument) -> None:
        write_private_file(self.path, (json.dumps(_store_json(document), indent=1, sort_keys=True) + "\n").encode())


def limits_json(limits: KeyLimits) -> dict[str, Any]:
    return {"requests_per_minute": limits.requests_per_minute, "tokens_per_minute": limits.tokens_per_minute,
            "max_concurrent": limits.max_concurrent, "daily_budget_usd": limits.daily_budget_usd}


def record_json(record: KeyRecord) -> dict[str, Any]:
    """A key as `rpm keys list --json` and the management API show it: never its digest or token."""
    return {"name": record.name, "role": record.role,
            "pods": None if record.pods is None else list(record.pods),
            "models": None if record.models is None else list(record.models),
            "limits": limits_json(record.limits), "created_at": iso_utc(record.created_at),
            "expires_at": None if record.expires_at is None else iso_utc(record.expires_at),
            "revoked_at": None if record.revoked_at is None else iso_utc(record.revoked_at)}


def _store_json(document: StoreDocument) -> dict[str, Any]:
    return {"version": STORE_VERSION, "secret": document.secret.hex(),
            "keys": [{**record_json(record), "digest": record.digest, "created_at": record.created_at,
                      "expires_at": record.expires_at, "revoked_at": record.revoked_at}
                     for record in document.keys]}


def _optional_number(value: Any, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ValueError(f"{value!r} is not a number")
    return value


def _parse_store(document: Any) -> StoreDocument:
    if not isinstance(document, dict) or document.get("version") != STORE_VERSION:
        raise ValueError(f"expected version {STORE_VERSION}")
    records = []
    for item in document["keys"]:
        limits = item.get("limits") or {}
        role = item["role"]
        if role not in ROLES:
            raise ValueError(f"role {role!r}")
        records.append(KeyRecord(
            name=str(item["name"]), digest=str(item["digest"]), role=role,
            pods=None if item.get("pods") is None else tuple(str(p) for p in item["pods"]),
            models=None if item.get("models") is None else tuple(str(m) for m in item["models"]),
            limits=KeyLimits(requests_per_minute=_optional_number(limits.get("requests_per_minute"), int),
                             tokens_per_minute=_optional_number(limits.get("tokens_per_minute"), int),
                             max_concurrent=_optional_number(limits.get("max_concurrent"), int),
                             daily_budget_usd=_optional_number(limits.get("daily_budget_usd"), float)),
            created_at=float(item["created_at"]),
            expires_at=_optional_number(item.get("expires_at"), float),
            revoked_at=_optional_number(item.get("revoked_at"), float)))
    return StoreDocument(secret=bytes.fromhex(document["secret"]), keys=tuple(records))


def iso_utc(epoch_seconds: float) -> str:
    """A moment as the key store and the management API write it: `2026-01-31T18:00:00Z`."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------ the index


class KeyIndex:
    """What the proxy resolves tokens with: digest → Principal, for the store's live keys and the config's."""

    def __init__(self, document: StoreDocument | None, config_keys: Iterable[str] = ()) -> None:
        self.secret = document.secret if document is not None else secrets.token_bytes(32)
        by_digest: dict[str, Principal] = {}
        for number, token in enumerate(config_keys, start=1):
            by_digest[digest_of(self.secret, token)] = Principal(name=f"config-key-{number}", source="config")
        if document is not None:
            for record in document.keys:
                if record.revoked_at is None:
                    by_digest[record.digest] = record.principal()
        self.by_digest = by_digest
        # Keys are required as soon as any exists, revoked ones included: revoking the last key must not
        # open the proxy to everyone.
        self.required = bool(by_digest) or (document is not None and bool(document.keys))
        self.names = tuple(sorted({p.name for p in by_digest.values()}))

    def named(self, name: str, now: float) -> Principal | None:
        """The live key of that name (a job replayed for the key that submitted it); None once it is revoked
        or expired."""
        principal = next((p for p in self.by_digest.values() if p.name == name), None)
        if principal is None or principal.expired(now):
            return None
        return principal

    def resolve(self, token: str, now: float) -> Principal | None:
        principal = self.by_digest.get(digest_of(self.secret, token))
        if principal is None or principal.expired(now):
            return None
        return principal


class KeyWatcher:
    """The proxy's current KeyIndex, reloaded when the store file changes (checked with one stat)."""

    def __init__(self, path: Path, config_keys: tuple[str, ...]) -> None:
        self.store = KeyStore(path)
        self.config_keys = config_keys
        self._seen: tuple[int, int, int] | None = None
        self.index = KeyIndex(None, config_keys)
        self.reload()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.store.path)
        except FileNotFoundError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def changed(self) -> bool:
        return self._signature() != self._seen

    def reload(self) -> None:
        """Read the store again (a damaged store keeps the last good index, and says so by raising)."""
        signature = self._signature()
        document = self.store.load()
        self.index = KeyIndex(document, self.config_keys)
        self._seen = signature


# ------------------------------------------------------------------------------------------ usage counters


@dataclass
class KeyUsage:
    """One key's use on one day (the proxy's zone day: the same day as the spend cap's)."""

    requests: int = 0
    tokens: int = 0
    spend_usd: float = 0.0
    last_used_at: float | None = None
    refused: int = 0  # requests answered 429/403 by this key's limits or scopes

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "tokens": self.tokens, "spend_usd": self.spend_usd,
                "last_used_at": self.last_used_at, "refused": self.refused}


USAGE_KEEP_DAYS = 31


def load_usage(path: Path) -> dict[str, dict[str, KeyUsage]]:
    """day (ISO date) → key name → usage. A missing file is no usage; a damaged one is a StateError."""
    try:
        raw = read_regular_file(path, max_bytes=_MAX_STORE_BYTES)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateError(f"cannot read the key usage file {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(raw)
        if document.get("version") != USAGE_VERSION:
            raise ValueError(f"expected version {USAGE_VERSION}")
        return {day: {name: KeyUsage(requests=int(entry["requests"]), tokens=int(entry["tokens"]),
                                     spend_usd=float(entry["spend_usd"]), last_used_at=entry.get("last_used_at"),
                                     refused=int(entry.get("refused", 0)))
                      for name, entry in names.items()}
                for day, names in document["days"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StateError(f"the key usage file {path} is damaged ({exc}); move it aside to start counting "
                         "anew") from None


def save_usage(path: Path, days: Mapping[str, Mapping[str, KeyUsage]]) -> None:
    kept = sorted(days)[-USAGE_KEEP_DAYS:]
    document = {"version": USAGE_VERSION,
                "days": {day: {name: usage.as_json() for name, usage in days[day].items()} for day in kept}}
    write_private_file(path, (json.dumps(document, sort_keys=True) + "\n").encode())


# ------------------------------------------------------------------------------------------ `rpm keys`


def known_scopes(config: Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names --pods and --models may use: the config's pods, and every model name it routes."""
    from runpod_manager.model_names import config_model_names

    return tuple(pod.name for pod in config.all_pods), config_model_names(config)


def usage_day(epoch_seconds: float, zone: tzinfo | None) -> str:
    """The day a moment's usage counts to: the config's zone (limits.timezone), like the spend cap's day."""
    return datetime.fromtimestamp(epoch_seconds, zone).date().isoformat()


@dataclass(frozen=True)
class UsageRow:
    record: KeyRecord
    status: str
    today: KeyUsage
    last_used_at: float | None


@dataclass(frozen=True)
class UsageReport:
    day: str
    rows: tuple[UsageRow, ...]


def usage_report(paths: Paths, *, name: str | None, now: float, zone: tzinfo | None) -> UsageReport:
    """`rpm keys usage [NAME]`: each key's requests, tokens and spend today, and when it was last used.
    Revoked keys are listed too: their usage stays theirs."""
    records = KeyStore(paths.keys_file).records()
    if name is not None:
        records = tuple(record for record in records if record.name == name)
        if not records:
            known = ", ".join(record.name for record in KeyStore(paths.keys_file).records())
            raise UsageError(f"no key named {name!r}; the keys are {known or '(none)'}")
    return report_of(records, load_usage(paths.key_usage_file), now=now, zone=zone)


def report_of(records: Iterable[KeyRecord], days: Mapping[str, Mapping[str, KeyUsage]], *, now: float,
              zone: tzinfo | None) -> UsageReport:
    """Each key's usage today and when it was last used, from the counters by day: the file's (`rpm keys
    usage`) or a running proxy's own (the management API, the dashboard)."""
    day = usage_day(now, zone)
    today = days.get(day, {})
    rows = []
    for record in records:
        last = max((entry[record.name].last_used_at or 0.0 for entry in days.values() if record.name in entry),
                   default=0.0)
        rows.append(UsageRow(record=record, status=record.status(now), today=today.get(record.name, KeyUsage()),
                             last_used_at=last or None))
    return UsageReport(day=day, rows=tuple(rows))
