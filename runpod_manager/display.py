"""How rpm writes values that need care, one function each, used by every message, view and log line.

`usd` for money, `url` for a URL that may carry credentials. No imports from the package: the renderer, the
planner, the config and the proxy all use it, and `rpm --help` stays fast.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit


def usd(amount: float) -> str:
    """How rpm writes an amount of money (a spend, a cap, a price): cents, and below ten cents two significant
    digits, so $0.001 reads "$0.001", never "$0.00". The one format for every message and view."""
    if amount == 0 or not math.isfinite(amount) or abs(amount) >= 0.1:
        return f"${amount:,.2f}"
    decimals = min(6, max(2, 1 - math.floor(math.log10(abs(amount)))))
    text = f"{amount:.{decimals}f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def url(value: str) -> str:
    """A URL as rpm shows, logs or stores it: scheme, host, port and path, never userinfo, query or fragment
    (`RUNPOD_API_URL=https://user:KEY@host/?api_key=KEY` carries a key in both)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or parts.hostname is None:
        return "<unparseable URL>" if any(mark in value for mark in "@?#") else value
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{parts.path}"
