"""proxy/hosts.py: which Host a proxy port answers (DNS rebinding), for each kind of bind."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from runpod_manager.config import ProxyConfig
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.hosts import HostCheck, host_check, split_host


def answers(check: HostCheck | None, host: str) -> bool:
    assert check is not None
    request = make_mocked_request("GET", "/health", headers={"Host": host})
    try:
        check.check(request)
    except ProxyError as exc:
        refusal = exc
    else:
        return True
    assert refusal.status == 421 and refusal.code == "host_not_allowed"
    assert "[proxy] allowed_hosts" in refusal.message
    return False


def test_a_loopback_bind_answers_its_own_names_and_the_allowed_ones() -> None:
    check = host_check(ProxyConfig(host="127.0.0.1", port=8080, allowed_hosts=("GPU.example.com", "lan:9000")), 8080)
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST:8080", "127.0.0.1",
                 "gpu.example.com", "gpu.example.com:443", "lan:9000"):
        assert answers(check, host), host
    for host in ("evil.example", "evil.example:8080", "lan:9001", "localhost:3000", "127.0.0.1.evil.example:8080"):
        assert not answers(check, host), host


def test_beyond_loopback_keys_protect_the_proxy_unless_allowed_hosts_asks_for_the_check() -> None:
    assert host_check(ProxyConfig(host="0.0.0.0", api_keys=("k",)), 8080) is None  # noqa: S104
    check = host_check(ProxyConfig(host="10.0.0.5", allowed_hosts=("gpu.example.com",)), 8080)
    assert answers(check, "10.0.0.5:8080") and answers(check, "gpu.example.com")
    assert not answers(check, "evil.example:8080")
    assert host_check(ProxyConfig(allowed_hosts=("*",)), 8080) is None


@pytest.mark.parametrize(("host", "expected"), [("a:1", ("a", 1)), ("a", ("a", None)), ("[::1]:80", ("[::1]", 80)),
                                                ("[::1]", ("[::1]", None)), ("a:x", ("a", None))])
def test_split_host(host: str, expected: tuple[str, int | None]) -> None:
    assert split_host(host) == expected
