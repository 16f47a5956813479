"""The world's knobs: `Settings`, how it behaves (timings, billing speed, balance, API quota; fixed at
start except the balance), and `Faults`, the failures to inject, changed at run time through
`/_sandbox/faults`. The world consumes the counter faults where they apply (creates, resumes, boots); the
API layer applies the per-call ones (rate limit, and `injected_error` / `injected_latency`)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Settings:
    """How the world behaves; fixed at start (flags), except balance which the control API may set."""

    provision_seconds: float = 1.0
    start_seconds: float = 1.5
    model_load_seconds: float = 2.0
    bill_speed: float = 1.0
    balance_usd: float = 1000.0
    quota_per_minute: int = 6000


@dataclass
class Faults:
    """Failures to inject. Counters are consumed one per affected call; rates apply to every v2 call."""

    fail_creates: int = 0
    refuse_resumes: int = 0
    rate_limit: int = 0
    retry_after_seconds: int = 1
    error_rate: float = 0.0
    latency_seconds: float = 0.0
    latency_rate: float = 1.0
    create_5xx_but_created: int = 0
    fail_boots: int = 0  # the next N pods to finish STARTING go to ERROR instead of RUNNING (a broken host)
    model_load_seconds: float | None = None

    _COUNTERS = ("fail_creates", "refuse_resumes", "rate_limit", "create_5xx_but_created", "fail_boots")
    _RATES = ("error_rate", "latency_rate")

    def take(self, name: str) -> bool:
        """Consume one unit of a counter fault; True when the fault fires for this call."""
        remaining = getattr(self, name)
        if remaining > 0:
            setattr(self, name, remaining - 1)
            return True
        return False

    def injected_latency(self, rng: random.Random) -> float:
        """Seconds to hold this call's answer (0 when the latency fault does not hit it)."""
        if self.latency_seconds > 0 and rng.random() < self.latency_rate:
            return self.latency_seconds
        return 0.0

    def injected_error(self, rng: random.Random) -> int | None:
        """The 5xx status this call fails with instead of being handled, or None."""
        if self.error_rate > 0 and rng.random() < self.error_rate:
            return rng.choice((500, 502, 503))
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: Mapping[str, Any]) -> list[str]:
        """Apply a partial update after checking every value; returns problems and changes nothing then."""
        known = {f.name for f in fields(self)}
        problems: list[str] = []
        for name, value in changes.items():
            if name not in known:
                problems.append(f"$.{name}: unknown fault")
            elif name == "model_load_seconds" and value is None:
                continue
            elif name in self._COUNTERS or name == "retry_after_seconds":
                if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                    problems.append(f"$.{name}: expected a non-negative integer")
            elif not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
                problems.append(f"$.{name}: expected a non-negative number")
            elif name in self._RATES and value > 1:
                problems.append(f"$.{name}: must be between 0 and 1")
        if not problems:
            for name, value in changes.items():
                setattr(self, name, value)
        return problems
