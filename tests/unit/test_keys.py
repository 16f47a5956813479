"""keys.py: the hashed store, names, --expires, scopes, the proxy's index and its reload on change."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runpod_manager.errors import StateError, UsageError
from runpod_manager.keys import (
    KeyIndex,
    KeyLimits,
    KeyStore,
    KeyWatcher,
    Principal,
    check_name,
    check_scope,
    parse_expires,
    parse_role,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state" / "keys.json")


def test_a_created_key_is_stored_only_as_a_keyed_hash_in_a_0600_file(store: KeyStore) -> None:
    created = store.create("alice", role="admin", pods=("coder",), limits=KeyLimits(requests_per_minute=60),
                           now=NOW.timestamp())
    assert created.token.startswith("rpm_") and len(created.token) >= 40
    text = store.path.read_text()
    assert created.token not in text and created.token[4:] not in text
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    document = json.loads(text)
    assert document["keys"][0]["digest"] != created.token
    assert "alice" in repr(created) and created.token not in repr(created)  # never in a log by accident
    index = KeyIndex(store.load())
    principal = index.resolve(created.token, NOW.timestamp())
    assert principal == Principal(name="alice", role="admin", pods=frozenset({"coder"}),
                                  limits=KeyLimits(requests_per_minute=60))
    assert index.resolve(created.token + "x", NOW.timestamp()) is None
    assert index.resolve("", NOW.timestamp()) is None


def test_two_stores_hash_one_token_differently(tmp_path: Path) -> None:
    """The per-store secret: a digest copied from one store says nothing about another's."""
    first, second = KeyStore(tmp_path / "a" / "keys.json"), KeyStore(tmp_path / "b" / "keys.json")
    first.create("a", now=0)
    second.create("a", now=0)
    assert first.load().secret != second.load().secret  # type: ignore[union-attr]


def test_names_are_unique_even_after_revoking(store: KeyStore) -> None:
    store.create("bob", now=0)
    store.revoke("bob", now=1)
    with pytest.raises(UsageError, match="exists already"):
        store.create("bob", now=2)
    with pytest.raises(UsageError, match="no key named 'zed'; the keys are bob"):
        store.revoke("zed", now=2)


def test_a_revoked_key_stays_listed_and_resolves_to_nothing_but_keys_stay_required(store: KeyStore) -> None:
    created = store.create("bob", now=0)
    store.revoke("bob", now=5)
    [record] = store.records()
    assert record.revoked_at == 5 and record.status(10) == "revoked"
    index = KeyIndex(store.load())
    assert index.resolve(created.token, 10) is None
    assert index.required  # revoking the last key must not open the proxy


def test_an_expired_key_resolves_to_nothing(store: KeyStore) -> None:
    created = store.create("temp", expires_at=100.0, now=0)
    index = KeyIndex(store.load())
    assert index.resolve(created.token, 99.0) is not None
    assert index.resolve(created.token, 100.0) is None
    assert store.records()[0].status(100.0) == "expired"


def test_config_api_keys_are_unscoped_user_keys() -> None:
    index = KeyIndex(None, ("first-config-key", "second-config-key"))
    principal = index.resolve("second-config-key", 0)
    assert principal == Principal(name="config-key-2", source="config")
    assert principal.may_use_pod("anything") and principal.may_use_model("any") and not principal.is_admin
    assert not KeyIndex(None).required


@pytest.mark.parametrize("name", ["alice", "ci-bot", "a", "team.script_2", "x" * 63])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Alice", "-x", "a b", "x" * 64, "ünï", "config-key-1", "a/b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid key name"):
        check_name(name)


@pytest.mark.parametrize(("text", "seconds"), [("90m", 5400), ("12h", 43200), ("30d", 30 * 86400),
                                               ("2w", 14 * 86400)])
def test_expires_as_a_duration(text: str, seconds: int) -> None:
    assert parse_expires(text, NOW) == NOW.timestamp() + seconds


def test_expires_as_a_date_is_through_that_day_and_as_a_time_needs_a_zone() -> None:
    assert parse_expires("2026-12-31", NOW) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert parse_expires("2027-01-31T18:00:00Z", NOW) == datetime(2027, 1, 31, 18, tzinfo=UTC).timestamp()
    with pytest.raises(UsageError, match="zone"):
        parse_expires("2027-01-31T18:00:00", NOW)


@pytest.mark.parametrize("text", ["soon", "0d", "-1d", "3y", "2026-13-01", "2026-11-28", "12"])
def test_bad_expires(text: str) -> None:
    with pytest.raises(UsageError, match="invalid --expires"):
        parse_expires(text, NOW)


def test_scopes_must_name_the_configs_pods_and_models() -> None:
    assert check_scope("pods", [], ("chat", "coder")) is None
    assert check_scope("pods", ["coder", "chat,coder"], ("chat", "coder")) == ("coder", "chat")
    with pytest.raises(UsageError, match="unknown pods nope in --pods: the config's pods are chat, coder"):
        check_scope("pods", ["nope"], ("chat", "coder"))
    assert parse_role("admin") == "admin"
    with pytest.raises(UsageError, match="use user or admin"):
        parse_role("root")


def test_a_damaged_store_is_named(store: KeyStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    with pytest.raises(StateError, match=r"keys\.json is damaged"):
        store.load()


def test_the_watcher_reloads_only_when_the_store_changed(store: KeyStore) -> None:
    watcher = KeyWatcher(store.path, ())
    assert not watcher.index.required and not watcher.changed()
    created = store.create("carol", now=0)
    assert watcher.changed()
    watcher.reload()
    assert not watcher.changed()
    assert watcher.index.resolve(created.token, 1) is not None
    store.revoke("carol", now=2)
    assert watcher.changed()
    watcher.reload()
    assert watcher.index.resolve(created.token, 3) is None
