"""`rpm demo`: the whole flow against an embedded RunPod emulator, narrated, in well under a minute.

Everything is real except RunPod: the emulator answers over HTTP on a free port, the proxy runs as the
same background subprocess `rpm start` launches, and limits are enforced by the same reconcile pass.
It runs in a temporary RPM_HOME and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from runpod_manager.render import Renderer, money, show_shutdown

IDLE_TIMEOUT_SECONDS = 5
CODER_MODEL = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
CHAT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
DEMO_CONFIG = """\
version = 1

[limits]
runtime_seconds = 300
idle_timeout_seconds = {idle}
idle_action = "stop"
max_daily_spend_usd = 5.0

[pods.coder]
model = "{coder}"
gpu_types = ["NVIDIA GeForce RTX 4090", "NVIDIA L40S"]
max_price_per_hour = 1.5

[pods.chat]
model = "{chat}"
gpu_types = ["NVIDIA L40S", "NVIDIA GeForce RTX 4090"]

[startup]
initial_wait_seconds = 0.3
poll_interval_seconds = 0.3
ready_timeout_seconds = 60

[proxy]
port = {proxy_port}
reconcile_interval_seconds = 0.5

[cache]
dir = "{cache_dir}"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_demo(r: Renderer, *, keep_home: bool = False) -> dict[str, object]:
    """Run the story; returns what it showed (for --json)."""
    from runpod_manager.config import load_config
    from runpod_manager.lifecycle import Lifecycle
    from runpod_manager.paths import resolve_paths, write_private_file
    from runpod_manager.proxy import process
    from runpod_manager.sandbox.server import EmbeddedSandbox, SandboxOptions

    home = Path(tempfile.mkdtemp(prefix="rpm-demo-"))
    options = SandboxOptions(port=0, provision_seconds=0.8, start_seconds=0.8, model_load_seconds=1.2,
                             token_delay_seconds=0.03, bill_speed=120.0, quiet=True)
    sandbox = EmbeddedSandbox(options).start()
    lifecycle = None
    try:
        config_path = home / "pod_config.toml"
        text = DEMO_CONFIG.format(idle=IDLE_TIMEOUT_SECONDS, proxy_port=_free_port(), cache_dir=home / "cache",
                                  coder=CODER_MODEL, chat=CHAT_MODEL)
        write_private_file(config_path, text.encode("utf-8"))
        env = {"RPM_HOME": str(home), "RUNPOD_API_URL": sandbox.url, "RUNPOD_API_KEY": sandbox.api_key,
               "RPM_API_POD_URL_TEMPLATE": sandbox.pod_url_template, "RPM_CONFIG": str(config_path)}
        with _environment(env):
            paths = resolve_paths()
            config = load_config(config_path, paths=paths)
            lifecycle = Lifecycle(config, paths, proxy_alive=lambda: process.running_pid(paths))
            return _story(r, lifecycle, sandbox.url)
    finally:
        with contextlib.suppress(Exception), _environment({"RPM_HOME": str(home)}):
            process.stop_proxy_process(resolve_paths(), grace_seconds=5)
        if lifecycle is not None:
            lifecycle.close()
        sandbox.close()
        if keep_home:
            r.line(f"[dim]demo home kept at {home}[/]")
        else:
            shutil.rmtree(home, ignore_errors=True)


def _step(r: Renderer, number: int, text: str) -> None:
    r.line("")
    r.line(f"[bold cyan]{number}.[/] [bold]{text}[/]")


def _story(r: Renderer, lifecycle: object, sandbox_url: str) -> dict[str, object]:
    from runpod_manager import control
    from runpod_manager.lifecycle import Lifecycle
    from runpod_manager.render import show_fleet_status
    from runpod_manager.status import build_fleet_status

    assert isinstance(lifecycle, Lifecycle)  # noqa: S101 - narrowing for the type checker
    fleet = control.Fleet(lifecycle)
    coder = fleet.members["coder"]
    r.line(f"[bold]rpm demo[/]: a RunPod emulator is listening on {sandbox_url} (no account, no card).")
    r.line("Everything below is the real rpm talking to it over HTTP; only RunPod is simulated, "
           "and its clock bills 120× faster so the cost shows. Two pods are configured: "
           f"`coder` ({CODER_MODEL}) and `chat` ({CHAT_MODEL}).")

    _step(r, 1, "rpm start coder: open a lease, create the pod, wait until the model answers")
    with r.progress("starting pod…") as progress:
        started = control.start(coder, progress=progress)
    pod = started.pod
    r.line(f"   pod {started.record.pod_id} on {pod.gpu_type_id if pod else '?'} at "
           f"{money(pod.cost_per_hour if pod else None)}/h, ready in {started.wait_seconds:.1f} s "
           "(RUNNING and GET /v1/models answered)")
    base_url = control.ensure_proxy(coder)
    r.line(f"   proxy running: point your editor at [bold]{base_url}[/]")

    _step(r, 2, "a streamed chat completion through the proxy, to the coder model")
    text, cold = _chat(base_url, CODER_MODEL, "Write a haiku about GPUs that sleep when idle.")
    r.line(f"   [green]{text.strip()}[/]")

    _step(r, 3, "the same URL, the other model: the proxy wakes the chat pod for it")
    text, chat_cold = _chat(base_url, CHAT_MODEL, "Say hello from the chat pod.")
    r.line(f"   answered after a cold start of {chat_cold or '?'} s: [green]{text.strip()}[/]")

    _step(r, 4, "rpm status: a row per pod, and the account's spend against its cap")
    show_fleet_status(r, build_fleet_status(fleet, list(fleet.members.values())))

    _step(r, 5, f"no requests for {IDLE_TIMEOUT_SECONDS} s: the proxy's reconcile stops each idle pod")
    stopped = _wait_for(lambda: all(lifecycle.store.load().record(name).last_status == "EXITED"
                                    for name in ("coder", "chat")), 30)
    for name in ("coder", "chat"):
        record = lifecycle.store.load().record(name)
        r.line(f"   {name}: pod {record.pod_id} {record.last_status if stopped else 'still ' + str(record.last_status)}"
               f" — {record.last_reason or ''}")

    _step(r, 6, "the next coder request wakes it (resume) and waits instead of failing; chat stays asleep")
    text, cold = _chat(base_url, CODER_MODEL, "Say hello.")
    r.line(f"   answered after a cold start of {cold or '?'} s: [green]{text.strip()}[/]")
    r.line(f"   chat: {lifecycle.store.load().record('chat').last_status}")

    _step(r, 7, "rpm shutdown: stop the proxy, terminate both pods, close the leases")
    pod_ids = [lifecycle.store.load().record(name).pod_id for name in ("coder", "chat")]
    show_shutdown(r, control.shutdown(list(fleet.members.values())))
    spent = 0.0
    from datetime import UTC, datetime, timedelta

    for pod_id in (p for p in pod_ids if p):
        spent += lifecycle.client.pod_spend_usd(pod_id, since=datetime.now(UTC) - timedelta(days=1))
    r.line(f"   billed for both pods (emulator clock): {money(spent)}")
    actions = [event for event in lifecycle.events.tail(200) if event.get("reason")]
    r.line("")
    r.line(f"Every action was logged with its reason in {lifecycle.paths.event_log.name}; "
           f"these {len(actions)} did something to a pod:")
    for event in actions:
        r.line(f"   [dim]{event.get('config', '')}: {event['event']}: {event['reason']}[/]")
    r.line("")
    r.line("[bold green]done.[/] Next: `rpm init` (or `rpm init --pods`), set RUNPOD_API_KEY, `rpm start`.")
    return {"pod_ids": pod_ids, "base_url": base_url, "ready_seconds": round(started.wait_seconds, 3),
            "chat_cold_start_seconds": None if chat_cold is None else float(chat_cold),
            "wake_cold_start_seconds": None if cold is None else float(cold),
            "billed_usd": spent, "actions": [{"pod": e.get("config"), "event": e["event"], "reason": e["reason"]}
                                             for e in actions]}


def _chat(base_url: str, model: str, prompt: str) -> tuple[str, str | None]:
    body = {"model": model, "stream": True, "max_tokens": 24,
            "messages": [{"role": "user", "content": prompt}]}
    pieces: list[str] = []
    with requests.post(f"{base_url}/chat/completions", json=body, stream=True, timeout=60) as response:
        response.raise_for_status()
        cold = None
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith(": pod ready after "):  # a stream reports its wake in a comment
                cold = line[len(": pod ready after "):].removesuffix(" s")
            if not line or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(event["error"].get("message", "error from the proxy"))
            for choice in event.get("choices", []):
                pieces.append(choice.get("delta", {}).get("content") or "")
    return "".join(pieces), cold


def _wait_for(predicate: object, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.25)
    return False
