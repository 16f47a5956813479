"""display.py: the one way rpm writes money and URLs (issue #20 items 2 and 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runpod_manager.display import url, usd
from runpod_manager.errors import ConfigError
from runpod_manager.runpod.client import RunPodClient
from runpod_manager.state import PodRecord

SECRET = "KEY-0f9e8d"


@pytest.mark.parametrize(("amount", "shown"), [
    (0, "$0.00"), (0.001, "$0.001"), (0.00115, "$0.0011"), (0.05, "$0.05"), (0.015, "$0.015"), (0.5, "$0.50"),
    (1.005, "$1.00"), (20, "$20.00"), (1234.5, "$1,234.50")])
def test_money_keeps_two_significant_digits_below_ten_cents(amount: float, shown: str) -> None:
    assert usd(amount) == shown


@pytest.mark.parametrize(("given", "shown"), [
    ("https://api.runpod.io", "https://api.runpod.io"),
    (f"https://user:{SECRET}@api.runpod.io/v2?api_key={SECRET}#x", "https://api.runpod.io/v2"),
    (f"http://:{SECRET}@127.0.0.1:8080/", "http://127.0.0.1:8080/"),
    (f"ftp://u:{SECRET}@host", "ftp://host"),
    ("http://[::1]:9/x", "http://[::1]:9/x"),
    (f"not a url {SECRET}@", "<unparseable URL>"),
    (f"http://u:{SECRET}@h:99999", "<unparseable URL>")])
def test_a_url_is_shown_without_userinfo_query_or_fragment(given: str, shown: str) -> None:
    assert url(given) == shown


def test_the_state_keeps_the_api_by_its_shown_url_and_names_it_so(tmp_path: Path) -> None:
    record = PodRecord(config_name="llm", pod_id="pod-1")
    record.bind_api(f"https://user:{SECRET}@api.runpod.io", tmp_path / "pod_state.json")
    assert record.api_base_url == "https://api.runpod.io"
    record.bind_api("https://api.runpod.io", tmp_path / "pod_state.json")  # the same API, key or not

    with pytest.raises(ConfigError) as refused:
        record.bind_api(f"http://127.0.0.1:9/?api_key={SECRET}", tmp_path / "pod_state.json")

    assert "this run talks to http://127.0.0.1:9/" in str(refused.value) and SECRET not in str(refused.value)


def test_a_state_written_with_the_whole_url_still_binds_and_forgets_the_key(tmp_path: Path) -> None:
    record = PodRecord(config_name="llm", pod_id="pod-1", api_base_url=f"https://user:{SECRET}@api.runpod.io")
    record.bind_api(f"https://user:{SECRET}@api.runpod.io", tmp_path / "pod_state.json")
    assert record.api_base_url == "https://api.runpod.io"


def test_the_clients_errors_and_repr_name_the_host_only() -> None:
    client = RunPodClient("rpm-key", f"http://user:{SECRET}@127.0.0.1:9", max_retries=0,
                          connect_timeout_seconds=0.5)
    assert SECRET not in repr(client)
    with pytest.raises(ConfigError) as refused:
        RunPodClient("rpm-key", f"http://user:{SECRET}@127.0.0.1:9/?api_key={SECRET}")
    assert SECRET not in str(refused.value)
