"""What every part of the simulated world shares: the clock, the settings and faults, the GPU stock, the
billing ledger, the API call counters, the log sequence and the dirty flag (unsaved changes).

`Timeline` is the base of `World`; the pods (and, next, serverless endpoints) act through it: they read
the time, hold and release GPUs (stock and billing together), check the balance and write log lines.
Nothing here sleeps: the time is the injectable clock's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from runpod_manager.sandbox.billing import Ledger
from runpod_manager.sandbox.errors import LOW_BALANCE_DETAIL, WorldError
from runpod_manager.sandbox.faults import Faults, Settings
from runpod_manager.sandbox.gpus import StockKey, check_stock_key, initial_stock

Clock = Callable[[], float]

MAX_LOG_LINES = 5000  # per pod: the oldest go first


@dataclass
class LogLine:
    ts: float
    seq: int
    source: str  # "system" (the platform) or "container" (the pod's own output)
    line: str


class Timeline:
    """The shared clock and books. Every method is called from one thread (the server's event loop)."""

    def __init__(
        self,
        settings: Settings | None = None,
        faults: Faults | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._initial_faults = Faults(**(faults or Faults()).to_dict())
        self._initial_balance = self.settings.balance_usd
        self.faults = Faults(**self._initial_faults.to_dict())
        self.clock = clock
        self.rng = rng or random.Random()
        self.ledger = Ledger()
        self.stock: dict[StockKey, int] = initial_stock()
        self.calls: dict[str, int] = {}
        self.dirty = False
        self._log_seq = 0

    def now(self) -> float:
        return self.clock()

    def reset_books(self) -> None:
        """No spend, full stock, startup faults and balance, zero counters."""
        self.ledger.segments.clear()
        self.stock = initial_stock()
        self.calls.clear()
        self.faults = Faults(**self._initial_faults.to_dict())
        self.settings.balance_usd = self._initial_balance
        self.dirty = True

    def count_call(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1

    def log(self, logs: list[LogLine], source: str, line: str, at: float | None = None) -> None:
        """Append a line to a pod's log (numbered across the world), keeping the newest MAX_LOG_LINES."""
        self._log_seq += 1
        logs.append(LogLine(self.now() if at is None else at, self._log_seq, source, line))
        if len(logs) > MAX_LOG_LINES:
            del logs[: len(logs) - MAX_LOG_LINES]
        self.dirty = True

    # -- GPUs and money --

    def spend_usd(self, until: float | None = None) -> float:
        return self.ledger.spend_usd(self.now() if until is None else until)

    def check_balance(self) -> None:
        if self.spend_usd() >= self.settings.balance_usd:
            raise WorldError(402, LOW_BALANCE_DETAIL)

    def hold(self, key: StockKey, count: int, pod_id: str, usd_per_hour: float) -> None:
        """Take GPUs from stock and start billing (the caller checked that stock suffices)."""
        self.stock[key] = self.stock.get(key, 0) - count
        self.ledger.open(pod_id, self.now(), usd_per_hour, self.settings.bill_speed)
        self.dirty = True

    def release(self, key: StockKey, count: int, pod_id: str) -> None:
        """Give GPUs back and end the billing that `hold` started."""
        self.stock[key] = self.stock.get(key, 0) + count
        self.ledger.close(pod_id, self.now())
        self.dirty = True

    def set_stock(self, gpu_id: str, data_center_id: str, cloud: str, free: int) -> None:
        self.stock[check_stock_key(gpu_id, data_center_id, cloud)] = free
        self.dirty = True
