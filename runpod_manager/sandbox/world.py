"""The simulated RunPod world: the façade the API layer, the fake model and service servers and the tests use.

Plain Python with an injectable clock and random source, so every rule is unit-testable without a
server; nothing sleeps. `World` is a `Timeline` (the clock and the books every part shares: settings,
faults, GPU stock, billing ledger, call counters; timeline.py) that composes the parts: the pods and their
operations (pods.py), the GPU catalog (gpus.py), billing (billing.py) and faults (faults.py). Container
commands run as real processes through `containers.ContainerRunner`, which the server calls from a small
background tick. A second backend (serverless endpoints) is one more part beside `Pods`: see
docs/architecture.md.

Errors that RunPod answers with a problem body are raised as `WorldError(status, detail)` (errors.py); the
API layer renders them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runpod_manager.paths import make_dirs, read_regular_file
from runpod_manager.sandbox.billing import BillingSegment, Ledger, is_number, rfc3339
from runpod_manager.sandbox.faults import Faults, Settings
from runpod_manager.sandbox.gpus import gpu_types
from runpod_manager.sandbox.pods import ModelStats, Pod, Pods, ServiceStats, check_loaded_pod
from runpod_manager.sandbox.timeline import Clock, Timeline

STATE_VERSION = 1
MAX_STATE_BYTES = 256 * 1024 * 1024  # a world of thousands of pods with their logs is a few megabytes


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


class World(Timeline):
    """All simulated state. Every method is called from one thread (the server's event loop)."""

    def __init__(
        self,
        settings: Settings | None = None,
        faults: Faults | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(settings, faults, clock, rng)
        self.pod_ops = Pods(self)

    # -- the parts' state, as the callers read it --

    @property
    def pods(self) -> dict[str, Pod]:
        return self.pod_ops.pods

    @property
    def model_stats(self) -> dict[str, ModelStats]:
        return self.pod_ops.model_stats

    @property
    def service_stats(self) -> dict[str, ServiceStats]:
        return self.pod_ops.service_stats

    @property
    def billing(self) -> list[BillingSegment]:
        return self.ledger.segments

    # -- housekeeping --

    def reset(self) -> None:
        """Back to how the world started: no pods, no spend, full stock, startup faults, zero counters."""
        self.pod_ops.reset()
        self.reset_books()

    def advance(self) -> None:
        """Bring every pod's timeline up to now (the background tick calls this)."""
        self.pod_ops.advance()

    # -- pods (pods.py) --

    def add_container_output(self, pod_id: str, lines: Iterable[str]) -> None:
        self.pod_ops.add_container_output(pod_id, lines)

    def get_pod(self, pod_id: str) -> Pod:
        return self.pod_ops.get_pod(pod_id)

    def list_pods(self) -> list[Pod]:
        return self.pod_ops.list_pods()

    def pod_for_key(self, key: str) -> Pod | None:
        return self.pod_ops.pod_for_key(key)

    def model_name(self, pod: Pod) -> str:
        return self.pod_ops.model_name(pod)

    def max_model_len(self, pod: Pod) -> int:
        return self.pod_ops.max_model_len(pod)

    def model_api_key(self, pod: Pod) -> str | None:
        return self.pod_ops.model_api_key(pod)

    def model_state(self, pod_id: str, port: int) -> tuple[str, Pod | None]:
        return self.pod_ops.model_state(pod_id, port)

    def cost_usd_per_hour(self, pod: Pod) -> float:
        return self.pod_ops.cost_usd_per_hour(pod)

    def pod_json(self, pod: Pod) -> dict[str, Any]:
        return self.pod_ops.pod_json(pod)

    def create_pod(self, request: Mapping[str, Any]) -> Pod:
        return self.pod_ops.create_pod(request)

    def act(self, pod_id: str, action: str) -> Pod | None:
        return self.pod_ops.act(pod_id, action)

    def terminate(self, pod_id: str) -> None:
        self.pod_ops.terminate(pod_id)

    def update_pod(self, pod_id: str, changes: Mapping[str, Any]) -> Pod:
        return self.pod_ops.update_pod(pod_id, changes)

    def set_status(self, pod_id: str, status: str) -> Pod:
        return self.pod_ops.set_status(pod_id, status)

    def take_host(self, pod_id: str) -> Pod:
        return self.pod_ops.take_host(pod_id)

    def crash_model(self, pod_id: str) -> Pod:
        return self.pod_ops.crash_model(pod_id)

    # -- catalog (gpus.py) and billing (billing.py) --

    def gpu_types(self, *, availability: bool, count: int = 1, cloud: str = "SECURE",
                  countries: list[str] | None = None, cuda_versions: list[str] | None = None,
                  min_cuda: str | None = None) -> list[dict[str, Any]]:
        return gpu_types(self.stock, availability=availability, count=count, cloud=cloud,
                         countries=countries, cuda_versions=cuda_versions, min_cuda=min_cuda)

    def pod_billing(
        self, *, bucket_size: str, start: float, end: float, pod_id: str | None
    ) -> dict[str, Any]:
        """ListPodBillingResponse over [start, end) (already aligned to bucket boundaries)."""
        return self.ledger.pod_billing(now=self.now(), bucket_size=bucket_size, start=start, end=end,
                                       pod_id=pod_id)

    # -- introspection and persistence --

    def snapshot(self) -> dict[str, Any]:
        """Everything, including fields the v2 API hides (pod keys, host state), for /_sandbox/state."""
        self.advance()
        now = self.now()
        pods = [self.pod_ops.snapshot_json(pod, now) for pod in self.pods.values()]
        return {
            "now": rfc3339(now),
            "pods": pods,
            "faults": self.faults.to_dict(),
            "calls": dict(self.calls),
            "settings": asdict(self.settings),
            "spendUsd": self.spend_usd(),
            "balanceUsd": self.settings.balance_usd,
            "stock": [{"gpu": g, "dataCenter": d, "cloud": c, "free": n}
                      for (g, d, c), n in self.stock.items()],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "pods": self.pod_ops.to_list(),
            "billing": self.ledger.to_list(),
            "stock": [[g, d, c, n] for (g, d, c), n in self.stock.items()],
            "balanceUsd": self.settings.balance_usd,
            "logSeq": self._log_seq,
        }

    def load_dict(self, data: Any) -> None:
        """Replace the state with a saved one; ValueError saying what is wrong when it is not one.

        Checked up front (shapes, ids, numbers) so that a damaged file fails at start with one line
        instead of as 500s on the first request that touches the bad pod.
        """
        if not isinstance(data, dict):
            raise ValueError(f"not a sandbox state file (expected a JSON object, got {_json_kind(data)})")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported sandbox state version {data.get('version')!r}")
        try:
            pods = Pods.parse(data["pods"])
            billing = Ledger.parse(data["billing"])
            stock = {(str(g), str(d), str(c)): int(n) for g, d, c, n in data["stock"]}
            balance_usd = data.get("balanceUsd", self.settings.balance_usd)
            log_seq = int(data.get("logSeq", 0))
        except KeyError as exc:
            raise ValueError(f"not a sandbox state file (missing {exc.args[0]!r})") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"not a sandbox state file ({exc})") from None
        if not is_number(balance_usd):  # a NaN balance compares false with any spend: never exhausted
            raise ValueError(f"not a sandbox state file (balanceUsd must be a finite number, got {balance_usd!r})")
        for pod in pods.values():
            check_loaded_pod(pod)
        Ledger.check(billing)
        self.pod_ops.pods, self.ledger.segments, self.stock = pods, billing, stock
        self.settings.balance_usd = float(balance_usd)
        self._log_seq = log_seq
        self.dirty = False

    def save(self, path: Path) -> None:
        """Write the state atomically (temp file in the same directory, fsync, rename)."""
        make_dirs(path.parent)  # missing ones 0700 whatever the umask; existing ones are the user's
        fd, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_name, 0o600)  # holds pod-scoped keys
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        self.dirty = False

    def load(self, path: Path) -> bool:
        """Load a saved world; False when the file does not exist yet."""
        try:
            text = read_regular_file(path, max_bytes=MAX_STATE_BYTES).decode("utf-8")
        except FileNotFoundError:
            return False
        try:
            data = json.loads(text)
        except RecursionError:  # `[[[[...` deep enough exhausts the decoder's stack: not a state file either
            raise ValueError("not a sandbox state file (JSON nested too deeply)") from None
        self.load_dict(data)
        return True
