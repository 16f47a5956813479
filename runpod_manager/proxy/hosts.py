"""Which `Host` a proxy port answers: the defence against DNS rebinding.

A page on `evil.example` can make its name resolve to 127.0.0.1 after it loaded; the browser then sends the
page's requests to the proxy as same-origin ones (`Host: evil.example:8080`, `Sec-Fetch-Site: same-origin`),
reads the answers, and a proxy without keys would serve them. A browser always sends the name it resolved,
so a port bound on loopback answers only Host values that name this machine: 127.0.0.1, localhost and
[::1] (and the bound address) with the port the request arrived on, plus `[proxy] allowed_hosts` (a reverse
proxy's public name, say). Anything else gets 421 naming that setting, before anything else happens.

A bind beyond loopback needs keys (bind.check_bind), and a rebinding page has none, so Host is checked
there only when `allowed_hosts` is set. `"*"` in allowed_hosts turns the check off.

The hot path is one frozenset lookup of the Host as sent: the own names with the configured port, and the
allowed entries. A miss (a port 0 config's bound port, a name in capitals, a name allowed on any port) takes
the slow path, which reads the socket's own port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from runpod_manager.config import ProxyConfig
from runpod_manager.proxy.errors import ProxyError

_OWN_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - compared, not bound
_SHOWN_HOST_CHARACTERS = 100


@dataclass(frozen=True)
class HostCheck:
    """The Host values one port answers (`check` raises ProxyError 421 for others)."""

    exact: frozenset[str]  # full Host values, as sent (lower-case): the fast path
    own_names: frozenset[str]  # this machine's names: accepted with the port the request arrived on
    any_port: frozenset[str]  # allowed_hosts names given without a port
    shown: str  # what the refusal lists

    def check(self, request: web.Request) -> None:
        host = request.headers.get("Host")
        if host is None or host in self.exact:  # no Host: HTTP/1.0, never a browser
            return
        lowered = host.lower()
        if lowered in self.exact:
            return
        name, port = split_host(lowered)
        # An own name without a port is no rebinding page's (a browser sends the name it resolved): a hand-made
        # client's `Host: 127.0.0.1`.
        if name in self.any_port or (name in self.own_names and (port is None or port == _arrival_port(request))):
            return
        shown = host[:_SHOWN_HOST_CHARACTERS]
        raise ProxyError(421, f"the Host header {shown!r} does not name this proxy, which answers to "
                         f"{self.shown}: a page reaching it under another name (DNS rebinding) is refused. Behind "
                         "a reverse proxy, or to use another name for this machine, add it to [proxy] allowed_hosts "
                         "in pod_config.toml", code="host_not_allowed", should_retry=False)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere; treat it as reachable from outside


def host_check(proxy: ProxyConfig, port: int) -> HostCheck | None:
    """The check of a port of the proxy (its main port, or a listen port) bound as `proxy.host`; None: any
    Host is answered (a bind beyond loopback without allowed_hosts, or allowed_hosts = ["*"])."""
    allowed = tuple(entry.lower() for entry in proxy.allowed_hosts)
    if "*" in allowed or (not is_loopback_host(proxy.host) and not allowed):
        return None
    names = set(_OWN_NAMES)
    if proxy.host not in _WILDCARDS:
        names.add(proxy.host.lower() if ":" not in proxy.host else f"[{proxy.host.strip('[]').lower()}]")
    exact = {*names, *(f"{name}:{port}" for name in names)}
    any_port = {entry for entry in allowed if split_host(entry)[1] is None}
    exact.update(allowed)
    shown = ", ".join([*sorted(f"{name}:{port}" for name in names), *allowed])
    return HostCheck(frozenset(exact), frozenset(names), frozenset(any_port), shown)


def split_host(host: str) -> tuple[str, int | None]:
    """`name[:port]` or `[v6][:port]` → (name, port); port None when absent or not a number."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = host.partition(":")
    return name, int(port_text) if port_text.isdigit() else None


def _arrival_port(request: web.Request) -> int | None:
    """The local port the request came in on."""
    transport = request.transport
    sockname = None if transport is None else transport.get_extra_info("sockname")
    return int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else None
