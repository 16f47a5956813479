"""What must hold before the proxy binds its port: no open proxy beyond loopback, TLS files that load.

Checked by `rpm start` before a lease opens (process.claim_port) and by the proxy itself (server.serve); kept
apart from server.py so that the check does not import the application."""

from __future__ import annotations

import ssl
from pathlib import Path

from runpod_manager.config import ProxyConfig
from runpod_manager.errors import ConfigError
from runpod_manager.paths import Paths
from runpod_manager.proxy.hosts import is_loopback_host


def check_bind(proxy: ProxyConfig, *, team_keys: bool = False) -> None:
    """Refuse to serve an open proxy: a non-loopback bind needs client keys (the config's or `rpm keys`')."""
    if not is_loopback_host(proxy.host) and not proxy.api_keys and not team_keys:
        raise ConfigError(
            f"[proxy] host = {proxy.host!r} listens beyond this machine but [proxy] api_keys is empty and "
            "`rpm keys` has no key, so anyone who can reach it could use (and pay for) the pod",
            hint="create a key with `rpm keys create`, set [proxy] api_keys, or bind [proxy] host = \"127.0.0.1\"")


def has_team_keys(paths: Paths) -> bool:
    from runpod_manager.keys import KeyStore

    return bool(KeyStore(paths.keys_file).records())


def build_ssl_context(proxy: ProxyConfig) -> ssl.SSLContext | None:
    """The server TLS context when use_https is on; a ConfigError naming the key when it cannot load."""
    if not proxy.use_https:
        return None
    if not proxy.ssl_cert or not proxy.ssl_key:
        raise ConfigError("[proxy] use_https needs ssl_cert and ssl_key")
    cert, key = Path(proxy.ssl_cert).expanduser(), Path(proxy.ssl_key).expanduser()
    if not cert.is_file():
        raise ConfigError(f"[proxy] ssl_cert {str(cert)!r}: no such file")
    if not key.is_file():
        raise ConfigError(f"[proxy] ssl_key {str(key)!r}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"[proxy] ssl_cert {str(cert)!r} / ssl_key {str(key)!r}: cannot load the "
                          f"certificate and key ({exc.reason or exc})",
                          hint="both must be PEM files, and the key must belong to the certificate") from None
    except OSError as exc:
        raise ConfigError(f"[proxy] ssl_cert {str(cert)!r} / ssl_key {str(key)!r}: cannot read "
                          f"({exc.strerror})") from None
    return context
