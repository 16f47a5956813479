"""How rpm writes amounts: one format per unit, used by every message, view and log line that shows one.

No imports from the package: the renderer, the planner and the proxy all use it, and `rpm --help` stays fast.
"""

from __future__ import annotations

import math


def usd(amount: float) -> str:
    """How rpm writes an amount of money (a spend, a cap, a price): cents, and below ten cents two significant
    digits, so $0.001 reads "$0.001", never "$0.00". The one format for every message and view."""
    if amount == 0 or not math.isfinite(amount) or abs(amount) >= 0.1:
        return f"${amount:,.2f}"
    decimals = min(6, max(2, 1 - math.floor(math.log10(abs(amount)))))
    text = f"{amount:.{decimals}f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"
