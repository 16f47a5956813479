"""Rich tables/progress and the --json envelope: the only place that prints.

Core functions return dataclasses; each `show_*` function turns one into Rich output or, with --json,
into the versioned envelope `{"rpm": 1, "command": ..., "ok": ..., "data" | "error": ...}` (pinned by a
contract test). Secrets (upstream keys, API keys) are never part of what is shown.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runpod_manager import display
from runpod_manager.display import usd
from runpod_manager.errors import RpmError

if TYPE_CHECKING:  # the results are imported by the commands that make them, not by `rpm --help`
    from runpod_manager.catalog import CatalogResult
    from runpod_manager.keys import CreatedKey, KeyLimits, KeyRecord, UsageReport
    from runpod_manager.outcomes import (
        FleetOutcome,
        FleetStatus,
        ManyStarts,
        PassOutcome,
        ProxyStopResult,
        ShutdownResult,
        StartResult,
        StatusResult,
    )
    from runpod_manager.report import Report, Row
    from runpod_manager.runpod.models import Pod
    from runpod_manager.simulate import Simulation
    from runpod_manager.state import PodRecord

ENVELOPE_VERSION = 1


@dataclass
class Renderer:
    command: str
    as_json: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        self.out = Console(soft_wrap=True, highlight=False)
        self.err = Console(stderr=True, soft_wrap=True, highlight=False)

    # ------------------------------------------------------------------------------------ envelope

    def emit(self, data: dict[str, Any], *, ok: bool = True) -> None:
        envelope = {"rpm": ENVELOPE_VERSION, "command": self.command, "ok": ok, "data": data}
        sys.stdout.write(json.dumps(envelope, default=_json_default, sort_keys=True) + "\n")
        sys.stdout.flush()

    def error(self, exc: RpmError | BaseException, exit_code: int) -> None:
        message = exc.message if isinstance(exc, RpmError) else str(exc)
        hint = exc.hint if isinstance(exc, RpmError) else None
        if self.as_json:
            envelope = {"rpm": ENVELOPE_VERSION, "command": self.command, "ok": False,
                        "error": {"type": type(exc).__name__, "message": message, "hint": hint,
                                  "exit_code": exit_code}}
            sys.stdout.write(json.dumps(envelope, sort_keys=True) + "\n")
            sys.stdout.flush()
            return
        line = f"[bold red]error:[/] {escape(message)}"
        if hint:
            line += f" [dim]({escape(hint)})[/]"
        self.err.print(line)

    def line(self, text: str, *, style: str | None = None) -> None:
        if not self.as_json:
            self.out.print(text, style=style)

    def note(self, text: str) -> None:
        """A side remark (notices, warnings) on stderr, so --json stdout stays one document."""
        self.err.print(f"[yellow]note:[/] {escape(text)}")

    @contextmanager
    def progress(self, label: str) -> Iterator[Callable[[Any], None]]:
        """A one-line live progress display (or plain lines when not a terminal / --json)."""
        last: list[str] = [""]

        def plain(update: Any) -> None:
            text = _progress_text(update)
            key = f"{update.status}:{update.detail}"
            if key != last[0] and not self.as_json:
                self.err.print(f"  {text}")
                last[0] = key

        if self.as_json or not self.err.is_terminal:
            yield plain
            return
        with self.err.status(label) as status:
            def live(update: Any) -> None:
                status.update(_progress_text(update))
            yield live


def _progress_text(update: Any) -> str:
    detail = f" · {update.detail}" if update.detail else ""
    pod = update.pod_id or "pod"
    return f"{pod}: {update.status} · {int(update.elapsed_seconds)} s · poll {update.attempt}{detail}"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if hasattr(value, "value"):
        return value.value
    return str(value)


def money(value: float | None) -> str:
    return "-" if value is None else usd(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def when(moment: datetime | None, now: datetime, *, bare: bool = False) -> str:
    """`08:32:39 (in 4s)`; with `bare`, `08:32:39, in 4s` for use inside parentheses."""
    if moment is None:
        return "-"
    local = moment.astimezone()
    left = (moment - now).total_seconds()
    rel = f"in {duration(left)}" if left >= 0 else f"{duration(-left)} ago"
    return f"{local:%H:%M:%S}, {rel}" if bare else f"{local:%H:%M:%S} ({rel})"


def table(title: str | None, columns: list[str]) -> Table:
    result = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for column in columns:
        result.add_column(column)
    return result


# ------------------------------------------------------------------------------------- per command


def pod_json(pod: Pod | None) -> dict[str, Any] | None:
    if pod is None:
        return None
    return {"id": pod.id, "name": pod.name, "status": pod.status_text, "gpu": pod.gpu_type_id,
            "gpu_count": pod.gpu_count, "cost_per_hour": pod.cost_per_hour,
            "data_center": pod.data_center_id,
            "uptime_seconds": pod.runtime.uptime_seconds if pod.runtime else None}


def lease_json(record: PodRecord) -> dict[str, Any] | None:
    lease = record.lease
    if lease is None:
        return None
    return {"opened_at": lease.opened_at, "deadline": lease.deadline, "opened_by": lease.opened_by}


def notes(r: Renderer, notices: list[str]) -> None:
    for notice in notices:
        r.note(notice)


def show_start(r: Renderer, result: StartResult) -> None:
    notes(r, result.notices)
    if r.as_json:
        r.emit(_start_json(result))
        return
    if result.dry_run:
        r.line("[bold]dry run[/]: nothing was changed. The plan:")
        for action in result.plan.actions:
            r.line(f"  • {escape(action.describe())}")
        if not result.plan.actions:
            r.line("  (nothing to do: the pod is already there)")
        return
    pod = result.pod
    verb = "created" if result.created else "resumed" if result.resumed else (
        "already running" if result.already_running else "ready")
    pod_text = f"{pod.id} ({pod.gpu_type_id}, {money(pod.cost_per_hour)}/h)" if pod else result.record.pod_id
    r.line(f"[green]●[/] pod {escape(str(pod_text))} {verb}" + ("" if result.ready else " (not waiting)"))
    if result.record.lease:
        r.line(f"  lease ends by {result.record.lease.deadline.astimezone():%Y-%m-%d %H:%M:%S %Z}")
    if result.proxy_url:
        r.line(f"  OpenAI base URL: [bold]{result.proxy_url}[/]")
    elif result.base_url:
        r.line(f"  pod URL: {display.url(result.base_url)}  (start the proxy with `rpm proxy` for wake/idle handling)")


def show_starts(r: Renderer, starts: ManyStarts) -> None:
    """`rpm start` of several pods: a line per pod (or its error), then the one proxy URL."""
    for result in starts.results.values():
        notes(r, result.notices)
    if r.as_json:
        r.emit({"pods": [{"name": result.record.config_name, **_start_json(result)}
                         for result in starts.results.values()],
                "errors": [{"name": name, "type": type(error).__name__, "message": error.message,
                            "hint": error.hint, "exit_code": int(error.exit_code)}
                           for name, error in starts.errors.items()],
                "proxy_url": starts.proxy_url}, ok=not starts.errors)
        return
    for name, result in starts.results.items():
        pod = result.pod
        verb = "created" if result.created else "resumed" if result.resumed else (
            "already running" if result.already_running else "ready")
        pod_text = f"{pod.id} ({pod.gpu_type_id}, {money(pod.cost_per_hour)}/h)" if pod else result.record.pod_id
        mark = "[green]●[/]" if name not in starts.errors else "[red]●[/]"
        r.line(f"{mark} {name}: pod {escape(str(pod_text))} {verb}" + ("" if result.ready else " (not ready)"))
    for name, error in starts.errors.items():
        r.err.print(f"[bold red]error:[/] {escape(name)}: {escape(error.message)}"
                    + (f" [dim]({escape(error.hint)})[/]" if error.hint else ""))
    if starts.proxy_url:
        r.line(f"  OpenAI base URL: [bold]{starts.proxy_url}[/] (the request's model picks the pod)")


def _start_json(result: StartResult) -> dict[str, Any]:
    return {"dry_run": result.dry_run, "pod": pod_json(result.pod), "created": result.created,
            "resumed": result.resumed, "already_running": result.already_running, "ready": result.ready,
            "base_url": result.base_url and display.url(result.base_url), "proxy_url": result.proxy_url,
            "lease": lease_json(result.record),
            "plan": [a.describe() for a in result.plan.actions]}


def show_fleet_status(r: Renderer, fleet: FleetStatus) -> None:
    """One row per pod, the account's spend against its cap, and pods the config no longer has."""
    for result in fleet.pods:
        notes(r, result.notices)
    account = {"spend_today_usd": round(fleet.account_spend_today_usd, 4),
               "max_daily_spend_usd": fleet.account_max_daily_spend_usd}
    if r.as_json:
        r.emit({"pods": [{"name": result.config_name, **_status_json(result)} for result in fleet.pods],
                "account": account, "unconfigured": fleet.unconfigured,
                "other_installs": [pod_json(pod) for pod in fleet.other_installs]})
        return
    grid = table("rpm · pods", ["pod", "status", "GPU", "$/h", "spend today", "lease", "deadline", "idle stop"])
    for result in fleet.pods:
        record, pod = result.record, result.pod
        state = pod.status_text if pod else ("unknown" if not result.pod_observed else "-")
        grid.add_row(result.config_name, f"{state}{' · ready' if result.ready and pod else ''}",
                     (pod.gpu_type_id if pod else record.gpu_type_id) or "-",
                     money(pod.cost_per_hour if pod else None), money(result.spend_today_usd),
                     "open" if record.lease else "closed", when(result.limits.deadline, result.now),
                     when(result.limits.idle_ends_at, result.now))
    r.out.print(grid)
    cap = f" of {money(fleet.account_max_daily_spend_usd)} (account cap)" if fleet.account_max_daily_spend_usd else ""
    r.line(f"spend today, all pods: {money(fleet.account_spend_today_usd)}{cap}")
    proxies = sorted({f"pid {result.proxy_pid} · {result.proxy_url}" for result in fleet.pods if result.proxy_pid})
    r.line(f"proxy: {', '.join(proxies) if proxies else 'not running'}")
    for result in fleet.pods:
        if result.routes:
            r.line(f"pod {escape(result.config_name)} (http): {' · '.join(result.routes)}")
        if result.public_url_open:
            r.line(f"[yellow]![/] pod {escape(result.config_name)}: {escape(PUBLIC_URL_WARNING)}")
        if result.unenforced:
            r.line(f"[yellow]![/] pod {escape(result.config_name)}: {escape(result.unenforced)}")
    for name in fleet.unconfigured:
        r.line(f"[yellow]![/] pod {escape(name)} is in state but no longer in the config; "
               "`rpm shutdown --all` ends it")
    _show_other_installs(r, fleet.other_installs)


def _show_other_installs(r: Renderer, pods: list[Pod]) -> None:
    for pod in pods:
        r.line(f"pod {escape(pod.id)} ({escape(pod.name)}, {escape(pod.status_text)}) is another rpm install's (or an "
               "older rpm's): rpm leaves it alone")


def _status_json(result: StatusResult) -> dict[str, Any]:
    record, limits = result.record, result.limits
    return {
        "config": result.config_name, "pod": pod_json(result.pod), "pod_id": record.pod_id,
        "observed": result.pod_observed, "observe_error": result.observe_error,
        "lease": lease_json(record), "spend_today_usd": round(result.spend_today_usd, 4),
        "max_daily_spend_usd": result.max_daily_spend_usd,
        "deadline": limits.deadline, "runtime_ends_at": limits.runtime_ends_at, "cutoff_at": limits.cutoff_at,
        "idle_ends_at": limits.idle_ends_at, "idle_seconds": result.idle_seconds,
        "proxy": {"pid": result.proxy_pid, "url": result.proxy_url},
        "pod_url": result.pod_url and display.url(result.pod_url),
        "ready": result.ready,
        "kind": result.kind, "routes": result.routes, "public_url_open": result.public_url_open,
        "last_action": record.last_action, "last_reason": record.last_reason,
        "last_lease_end_reason": record.last_lease_end_reason,
        "other_installs": [pod_json(pod) for pod in result.other_installs],
        "unenforced": result.unenforced, "watchdog_last_pass_at": result.watchdog_last_pass_at,
    }


PUBLIC_URL_WARNING = ("the pod URL answers without any key: anyone who learns it reaches the service, without "
                      "rpm's keys or limits (and keeps it busy); make the service check a key ([pods.<name>] "
                      "headers sends one)")


def show_status(r: Renderer, result: StatusResult) -> None:
    notes(r, result.notices)
    record, pod, now = result.record, result.pod, result.now
    limits = result.limits
    if r.as_json:
        r.emit(_status_json(result))
        return
    if record.pod_id is None and record.lease is None:
        r.line(f"no pod for config '{result.config_name}'"
               + (f" (last: {record.last_lease_end_reason})" if record.last_lease_end_reason else "")
               + ". Start one with `rpm start`.")
        if result.spend_today_usd:
            r.line(f"spend today: {money(result.spend_today_usd)} of {money(result.max_daily_spend_usd)}")
        _show_other_installs(r, result.other_installs)
        return
    grid = table(f"rpm · {result.config_name}", ["", ""])
    grid.show_header = False
    status = pod.status_text if pod else ("unknown" if not result.pod_observed else "gone")
    ready = result.ready and pod is not None
    grid.add_row("pod", f"{record.pod_id or '-'} ({record.pod_name or '-'})")
    grid.add_row("status", f"{status}{' · ready' if ready else ''}"
                 + (f" [dim]({escape(result.observe_error)})[/]" if result.observe_error else ""))
    grid.add_row("GPU", f"{(pod.gpu_type_id if pod else record.gpu_type_id) or '-'}"
                 + (f" × {pod.gpu_count}" if pod and pod.gpu_count > 1 else ""))
    grid.add_row("$/h", money(pod.cost_per_hour if pod else None))
    grid.add_row("uptime", duration(pod.runtime.uptime_seconds if pod and pod.runtime else None))
    grid.add_row("spend today", f"{money(result.spend_today_usd)}"
                 + (f" of {money(result.max_daily_spend_usd)}" if result.max_daily_spend_usd else ""))
    grid.add_row("lease", "open" if record.lease else f"closed ({record.last_lease_end_reason or '-'})")
    grid.add_row("deadline", when(limits.deadline, now))
    idle_seconds = result.idle_seconds
    if idle_seconds is not None and pod is not None and pod.runtime and pod.runtime.uptime_seconds is not None:
        # Idle counts from the lease's opening; a pod resumed since then has not been up that long.
        idle_seconds = min(idle_seconds, pod.runtime.uptime_seconds)
    grid.add_row("idle", f"{duration(idle_seconds)}"
                 + (f" (stops at {when(limits.idle_ends_at, now, bare=True)})" if limits.idle_ends_at else ""))
    grid.add_row("proxy", f"pid {result.proxy_pid} · {result.proxy_url}" if result.proxy_pid else "not running")
    if result.pod_url:
        grid.add_row("pod URL", display.url(result.pod_url))
    if result.routes:
        grid.add_row("service", " · ".join(result.routes))
    if result.public_url_open:
        grid.add_row("[yellow]![/] public", escape(PUBLIC_URL_WARNING))
    if result.unenforced:
        grid.add_row("[yellow]![/] limits", escape(result.unenforced))
    if record.last_action:
        grid.add_row("last action", f"{record.last_action}: {escape(record.last_reason or '')}")
    r.out.print(grid)
    _show_other_installs(r, result.other_installs)


def show_shutdown(r: Renderer, result: ShutdownResult) -> None:
    notes(r, result.notices)
    if r.as_json:
        r.emit({"dry_run": result.dry_run, "ended": [a.action.describe() for a in result.ended],
                "orphans_terminated": result.orphans_terminated, "proxy_stopped": result.proxy_stopped,
                "proxies_stopped": result.proxies_stopped, "other_installs": result.other_installs})
        return
    prefix = "[bold]dry run[/]: would " if result.dry_run else ""
    done = "" if result.dry_run else " ✓"
    for pid in result.proxies_stopped:
        r.line(f"proxy {pid} stopped{done}")
    for applied in result.ended:
        action = applied.action
        if action.kind.value == "terminate_orphan":
            r.line(f"{prefix}terminate pod {action.pod_id} ({escape(action.pod_name or '-')}): "
                   f"{escape(action.reason)}{done}")
        else:
            r.line(f"{prefix}{'stop' if action.kind.value == 'stop' else 'terminate'} pod {action.pod_id}{done}")
    for orphan in result.orphans_terminated:
        r.line(f"{prefix}terminate unknown rpm pod {escape(orphan)}{done}")
    if not result.ended and not result.orphans_terminated:
        r.line(f"nothing {'of this install ' if result.other_installs else ''}running; lease closed")
    for other in result.other_installs:
        r.line(f"left alone: pod {escape(other)} is another rpm install's (or an older rpm's)")


def show_proxy_stopped(r: Renderer, results: list[ProxyStopResult], url: str) -> None:
    """The proxy's last words: what it ended, and what still runs and until when, per pod (on stderr: the
    proxy's stdout may be a log)."""
    lines = [_proxy_stop_words(result) for result in results if result.pod_id or len(results) == 1]
    if r.as_json:
        r.emit({"url": url, "pods": [{"pod_id": result.pod_id,
                                      "ended": [f"{a.action.kind.value} {a.action.pod_id}" for a in result.ended],
                                      "failed": [f"{a.action.kind.value} {a.action.pod_id}: {a.error}"
                                                 for a in result.failed],
                                      "kept_until": result.kept_until, "idle_ends_at": result.idle_ends_at,
                                      "message": _proxy_stop_words(result)} for result in results]},
               ok=not any(result.failed for result in results))
        return
    r.err.print(f"proxy {url} stopped; {escape('; '.join(lines) or 'nothing of this config runs')}")


def _proxy_stop_words(result: ProxyStopResult) -> str:
    failed = [f"{a.action.kind.value} {a.action.pod_id}: {a.error}" for a in result.failed]
    if result.ended:
        verb = "stopped" if result.ended[0].action.kind.value == "stop" else "terminated"
        return f"pod {result.pod_id} {verb}: this proxy had woken it"
    if result.failed:
        return (f"could not end pod {result.pod_id}, which this proxy had woken ({'; '.join(failed)}); "
                "run `rpm shutdown`")
    if result.kept_until is not None:
        idle = (f"; the watchdog stops it idle at {result.idle_ends_at.astimezone():%H:%M:%S}"
                if result.idle_ends_at else "")
        return (f"pod {result.pod_id} keeps running under the lease `rpm start` opened, until "
                f"{result.kept_until.astimezone():%Y-%m-%d %H:%M:%S %Z} at the latest{idle}; "
                "`rpm shutdown` ends it now")
    return "nothing of this config runs"


def show_watchdog(r: Renderer, result: FleetOutcome) -> None:
    """Silent when there is nothing to do or the lock is busy (cron mails nothing); one line per action
    otherwise (prefixed by the pod's name when the config has several). A dry run always prints its plan."""
    auth_error = result.auth_error
    outcomes = result.outcomes
    if r.as_json:
        def actions(outcome: PassOutcome) -> dict[str, Any]:
            return {"plan": [{"kind": a.kind.value, "reason": a.reason, "pod_id": a.pod_id}
                             for a in outcome.plan.actions],
                    "applied": [{"kind": a.action.kind.value, "pod_id": a.action.pod_id, "ok": a.ok,
                                 "error": str(a.error) if a.error else None} for a in outcome.applied]}
        merged = {"plan": [p for o in outcomes.values() for p in actions(o)["plan"]],
                  "applied": [p for o in outcomes.values() for p in actions(o)["applied"]]}
        r.emit({"busy": result.busy, "dry_run": result.dry_run, "api_calls": result.api_calls,
                "spend_today_usd": round(result.spend_today_usd, 4), **merged,
                "pods": {name: {**actions(o), "spend_today_usd": round(o.spend_today_usd, 4),
                                "enforcement_failed": o.enforcement_failed} for name, o in outcomes.items()},
                "auth_error": str(auth_error) if auth_error else None},
               ok=not result.enforcement_failed and auth_error is None)
        return
    notes(r, result.notices)
    if result.busy:
        if r.verbose:
            r.note("another rpm process holds the state lock; skipping this pass")
        return
    named = len(outcomes) > 1
    if result.dry_run:
        r.line("[bold]dry run[/]: nothing was changed. The plan:")
    for name, outcome in outcomes.items():
        who = f"{name}: " if named else ""
        if result.dry_run:
            for action in outcome.plan.actions:
                r.line(f"  • {who}{escape(action.describe())}")
            if not outcome.plan.actions:
                r.line(f"  ({who}nothing to do: {escape(_record_summary(outcome))})")
            continue
        for applied in outcome.applied:
            mark = "✓" if applied.ok else f"[red]failed: {escape(str(applied.error))}[/]"
            r.line(f"{who}{escape(applied.action.describe())} {mark}")
    if auth_error is not None:
        r.error(auth_error, int(auth_error.exit_code))
    if r.verbose:
        for name, outcome in outcomes.items():
            r.line(f"state: {name + ': ' if named else ''}{escape(_record_summary(outcome))}, spend today "
                   f"{money(outcome.spend_today_usd)}")
        r.line(f"{result.api_calls} API call(s)")


def _record_summary(result: PassOutcome) -> str:
    record, pod = result.record, result.pod
    if record is None:
        return "no record"
    lease = (f"open until {record.lease.deadline.astimezone():%H:%M:%S}" if record.lease
             else f"closed, {record.last_lease_end_reason or '-'}")
    return (f"pod {record.pod_id or '-'} {pod.status_text if pod else record.last_status or 'none'}, "
            f"lease {lease}")


def show_catalog(r: Renderer, result: CatalogResult) -> None:
    if r.as_json:
        r.emit({"cloud": result.cloud, "gpu_count": result.gpu_count, "problems": result.problems,
                "gpus": [row.__dict__ for row in result.rows]}, ok=result.ok)
        return
    _catalog_table(r, result)
    if result.problems:
        for problem in result.problems:
            r.line(f"[yellow]![/] {escape(problem)}")
    else:
        r.line("[green]✓[/] the configured GPU types can be started")


def _catalog_table(r: Renderer, result: CatalogResult) -> None:
    grid = table(f"GPU types · {result.cloud} · {result.gpu_count} GPU(s)",
                 ["", "id", "VRAM", "secure $/h", "community $/h", "pod $/h", "availability", "data centers"])
    for row in result.rows:
        mark = f"[bold]{row.rank}[/]" if row.rank else ""
        grid.add_row(mark, row.id, f"{row.memory_gb} GB", money(row.price_secure), money(row.price_community),
                     money(row.pod_price_per_hour), row.availability or "-", ", ".join(row.data_centers[:4]))
    r.out.print(grid)
    r.line(f"[dim]cached in {result.cache_path}[/]")


INIT_NEXT_STEPS = (
    "edit [pod] model and gpu_types, and the [limits] you want",
    "export RUNPOD_API_KEY=…   (a key with Pods read/write; or try `rpm demo` / `rpm sandbox` first)",
    "rpm refresh-catalog       (checks your GPU types and prices)",
    "rpm start                 (starts the pod and the proxy; prints the base URL for your editor)",
)


def show_catalogs(r: Renderer, results: dict[str, CatalogResult]) -> None:
    """Every pod's GPU check: one table per distinct cloud and GPU count, then each pod's verdict."""
    if r.as_json:
        r.emit({"pods": [{"name": name, "cloud": result.cloud, "gpu_count": result.gpu_count,
                          "problems": result.problems} for name, result in results.items()],
                "gpus": [row.__dict__ for row in next(iter(results.values())).rows]},
               ok=all(result.ok for result in results.values()))
        return
    shown: set[tuple[str, int]] = set()
    for name, result in results.items():
        if (result.cloud, result.gpu_count) not in shown:
            shown.add((result.cloud, result.gpu_count))
            _catalog_table(r, result)
        verdict = ("[green]✓[/] its GPU types can be started" if result.ok
                   else "; ".join(escape(problem) for problem in result.problems))
        r.line(f"pod {escape(name)}: {verdict}")


def show_init(r: Renderer, path: Path, init_notes: list[str]) -> None:
    if r.as_json:
        r.emit({"written": str(path), "notes": init_notes, "next": list(INIT_NEXT_STEPS)})
        return
    r.line(f"wrote {path}")
    notes(r, init_notes)
    r.line("next:")
    for number, step in enumerate(INIT_NEXT_STEPS, 1):
        r.line(f"  {number}. {escape(step)}")


def show_report(r: Renderer, report: Report) -> None:
    """Per pod, a row per day and a total; then what it saved against always-on, and the notes."""
    if r.as_json:
        r.emit(report.to_json())
        return
    for note in report.notes:
        r.note(note)
    for pod in report.pods:
        disk = pod.total.storage_usd >= 0.005  # a column only for pods that paid for storage
        grid = table(f"{pod.pod} · ${pod.rate_usd_per_hour:.2f}/h · {report.since.astimezone():%Y-%m-%d %H:%M} to "
                     f"{report.until.astimezone():%Y-%m-%d %H:%M}",
                     ["day", "GPU h", "billed", *(["disk"] if disk else []), "requests", "cold starts",
                      "wait p50/p95/max", "idle billed", "always-on", "oracle"])
        for row in [*pod.days, pod.total]:
            grid.add_row(*_report_cells(row, disk), style="bold" if row is pod.total else None)
        r.out.print(grid)
    total = report.total
    billed = total.cost_usd + total.storage_usd
    saved = total.always_on_usd - billed
    share = f" ({saved / total.always_on_usd:.0%})" if total.always_on_usd else ""
    r.line(f"billed {money(billed)}{' (estimated*)' if total.cost_source != 'billing' else ''}; always-on would "
           f"have cost {money(total.always_on_usd)}: saved {money(saved)}{share}; the oracle "
           f"{money(total.oracle_usd)}. {total.cold_starts} cold start(s) felt.")
    if report.html_path is not None:
        r.line(f"wrote {escape(str(report.html_path))}")


def _report_cells(row: Row, disk: bool) -> list[str]:
    data = row.to_json()
    waits = "-" if not row.cold_starts else (
        f"{_seconds(data['wait_p50_seconds'])}/{_seconds(data['wait_p95_seconds'])}/"
        f"{_seconds(data['wait_max_seconds'])}")
    estimated = "*" if row.cost_source != "billing" else ""
    return [row.day, f"{row.gpu_hours:.2f}", f"{money(row.cost_usd)}{estimated}",
            *([money(row.storage_usd)] if disk else []), f"{row.requests:,}", str(row.cold_starts), waits,
            duration(row.idle_billed_hours * 3600), money(row.always_on_usd), money(row.oracle_usd)]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def show_simulation(r: Renderer, simulation: Simulation) -> None:
    """One row per policy (rpm's in bold); the model's assumptions; the recommendation when asked."""
    if r.as_json:
        r.emit(simulation.to_json())
        return
    for note in simulation.notes:
        r.note(note)
    data = simulation.to_json()
    trace, model = data["trace"], simulation.model
    always = next(p for p in data["policies"] if p["name"] == "always-on")["cost_usd"]
    recommended = simulation.recommendation.best.name if simulation.recommendation and \
        simulation.recommendation.best else None
    grid = table(f"rpm simulate · {trace['name']}: {trace['requests']:,} requests over {trace['days']:g} days "
                 f"({trace['active_hours']} active hours)",
                 ["policy", "cost", "vs always-on", "GPU h", "cold starts", "wait p50/p95/max", "$/active h"])
    for row in data["policies"]:
        saving = "" if not always else f"{(row['cost_usd'] - always) / always:+.0%}"
        waits = "-" if not row["cold_starts"] else (f"{_seconds(row['wait_p50_seconds'])}/"
                                                   f"{_seconds(row['wait_p95_seconds'])}/{_seconds(row['wait_max_seconds'])}")
        per_hour = "-" if row["usd_per_active_hour"] is None else money(row["usd_per_active_hour"])
        mark = " ←" if row["name"] == recommended and row["name"] != "rpm" else ""
        grid.add_row(row["name"] + mark, money(row["cost_usd"]), saving, f"{row['gpu_hours']:.1f}",
                     str(row["cold_starts"]), waits, per_hour, style="bold" if row["name"] == "rpm" else None)
    r.out.print(grid)
    resume, fresh = model.resume_boot, model.fresh_boot
    r.line(f"[dim]model: ${model.rate_usd_per_hour:.2f}/h billed per second; boot {resume.median_seconds:g} s "
           f"(p95 {resume.p95_seconds:g}) after a resume, {fresh.median_seconds:g} s (p95 {fresh.p95_seconds:g}) "
           f"when created; {model.refused_resume_rate:.0%} of resumes refused; {model.storage_gb:g} GB kept while "
           f"stopped at ${model.storage_usd_per_gb_month:.2f}/GB-month; seed {model.seed}. "
           f"{escape(trace['description'])}[/]")
    advice = simulation.recommendation
    if advice is None:
        return
    limit = f"a p95 cold-start wait of at most {advice.max_p95_wait_seconds:.0f} s"
    current = advice.current
    if advice.best is None:
        r.line(f"no idle setting keeps {limit}; only always-on does ({money(always)}).")
    elif not advice.changes:
        r.line(f"keep the config: with {limit}, nothing simulated costs less than it ({money(current.cost_usd)}, "
               f"{len(current.waits)} cold starts).")
    else:
        best = advice.best
        change = ", ".join(f"{key} = {json.dumps(value)}" for key, value in advice.changes.items())
        saved = current.cost_usd - best.cost_usd
        best_json = best.to_json(trace["active_hours"])
        r.line(f"recommended for {limit}: set {escape('[limits]')} {escape(change)}. It costs "
               f"{money(best.cost_usd)} instead of {money(current.cost_usd)} over this trace (saves {money(saved)}, "
               f"{saved / current.cost_usd:.0%}), with {len(best.waits)} cold starts instead of "
               f"{len(current.waits)} (p95 wait {_seconds(best_json['wait_p95_seconds'])}).")


# ------------------------------------------------------------------------------------- rpm keys


def _limits_words(limits: KeyLimits) -> str:
    parts = []
    if limits.requests_per_minute is not None:
        parts.append(f"{limits.requests_per_minute} rpm")
    if limits.tokens_per_minute is not None:
        parts.append(f"{limits.tokens_per_minute} tpm")
    if limits.max_concurrent is not None:
        parts.append(f"{limits.max_concurrent} at once")
    if limits.daily_budget_usd is not None:
        parts.append(f"{money(limits.daily_budget_usd)}/day")
    return ", ".join(parts) or "-"


def _scope_words(names: tuple[str, ...] | None) -> str:
    return "all" if names is None else ", ".join(names)


def _epoch_words(epoch_seconds: float | None) -> str:
    if epoch_seconds is None:
        return "-"
    return datetime.fromtimestamp(epoch_seconds).astimezone().strftime("%Y-%m-%d %H:%M")


def show_key_created(r: Renderer, created: CreatedKey) -> None:
    from runpod_manager.keys import record_json

    if r.as_json:  # scripts read data.secret: the only place the secret is ever shown
        r.emit({"key": record_json(created.record), "secret": created.token})
        return
    record = created.record
    r.line(f"created key [bold]{escape(record.name)}[/] ({record.role}; pods {escape(_scope_words(record.pods))}; "
           f"models {escape(_scope_words(record.models))}; limits {escape(_limits_words(record.limits))}; "
           f"expires {_epoch_words(record.expires_at)})")
    r.line("secret (shown once; rpm keeps only its hash):")
    sys.stdout.write(created.token + "\n")  # plain, unwrapped, uncoloured: it is copied
    sys.stdout.flush()


def show_keys(r: Renderer, records: tuple[KeyRecord, ...], *, now: float) -> None:
    from runpod_manager.keys import record_json

    if r.as_json:
        r.emit({"keys": [{**record_json(record), "status": record.status(now)} for record in records]})
        return
    if not records:
        r.line("no keys yet: `rpm keys create NAME` makes one")
        return
    listing = table(None, ["name", "role", "status", "pods", "models", "limits", "expires", "created"])
    for record in records:
        listing.add_row(escape(record.name), record.role, record.status(now), escape(_scope_words(record.pods)),
                        escape(_scope_words(record.models)), escape(_limits_words(record.limits)),
                        _epoch_words(record.expires_at), _epoch_words(record.created_at))
    r.out.print(listing)


def show_key_revoked(r: Renderer, record: KeyRecord) -> None:
    from runpod_manager.keys import record_json

    if r.as_json:
        r.emit({"key": record_json(record)})
        return
    r.line(f"revoked key [bold]{escape(record.name)}[/]: a running proxy refuses it within a second; its usage "
           "stays in `rpm keys usage`")


def show_key_usage(r: Renderer, report: UsageReport) -> None:
    if r.as_json:
        r.emit({"day": report.day, "keys": [
            {"name": row.record.name, "status": row.status, **row.today.as_json(),
             "daily_budget_usd": row.record.limits.daily_budget_usd,
             "last_used_at": None if row.last_used_at is None else datetime.fromtimestamp(row.last_used_at, UTC)}
            for row in report.rows]})
        return
    if not report.rows:
        r.line("no keys yet: `rpm keys create NAME` makes one")
        return
    listing = table(f"usage on {report.day}", ["name", "status", "requests", "tokens", "spend", "budget",
                                                "refused", "last used"])
    for row in report.rows:
        today = row.today
        listing.add_row(escape(row.record.name), row.status, str(today.requests), str(today.tokens),
                        money(today.spend_usd), money(row.record.limits.daily_budget_usd), str(today.refused),
                        _epoch_words(row.last_used_at))
    r.out.print(listing)
