"""The `rpm` command: each command parses its options, calls one core function and renders the result.

Errors are mapped to exit codes in one place (`_run`): an RpmError exits with its ExitCode and a
one-line message; anything unexpected shows a short message (RPM_DEBUG=1 re-raises with the traceback).
Rich's traceback-with-locals is disabled: locals may hold keys.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from runpod_manager import __version__
from runpod_manager.errors import ExitCode, RpmError, UsageError
from runpod_manager.render import Renderer

if TYPE_CHECKING:
    from runpod_manager.lifecycle import Lifecycle

app = typer.Typer(
    name="rpm",
    help="Keep a RunPod GPU pod available when you need it and stopped when you don't.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

T = TypeVar("T")

NamesArg = Annotated[list[str] | None, typer.Argument(
    help="Pods of the config (their [pods.<name>] names); none: every pod.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document (the versioned envelope).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say more.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $RPM_CONFIG, ./pod_config.toml, user config dir).",
                 dir_okay=False),
]


def _run(renderer: Renderer, body: Callable[[], T]) -> T:
    """The one place errors become exit codes: an RpmError exits with its class's code and one line."""
    try:
        return body()
    except RpmError as exc:
        renderer.error(exc, int(exc.exit_code))
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        renderer.error(RpmError("interrupted"), int(ExitCode.INTERRUPTED))
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("RPM_DEBUG") == "1":
            raise
        renderer.error(RpmError(f"unexpected {type(exc).__name__}: {_short(exc)}",
                                hint="set RPM_DEBUG=1 for the traceback"), int(ExitCode.FAILED))
        raise typer.Exit(int(ExitCode.FAILED)) from None


def command(name: str | None = None, *, group: typer.Typer | None = None
            ) -> Callable[[Callable[..., int]], Callable[..., None]]:
    """Register `fn(renderer, **options) -> exit code` as a command (of `group`, e.g. `rpm keys`, when given).
    The renderer comes from the command's --json/-v; errors and exit codes are mapped by `_run`, in one
    place, for every command."""

    def register(fn: Callable[..., int]) -> Callable[..., None]:
        signature = inspect.signature(fn, eval_str=True)
        command_name = name or fn.__name__
        shown_name = command_name if group is None else f"{group.info.name} {command_name}"

        @functools.wraps(fn)
        def run(**options: Any) -> None:
            renderer = Renderer(shown_name, bool(options.get("as_json")), bool(options.get("verbose")))
            code = _run(renderer, lambda: fn(renderer, **options))
            if code:
                raise typer.Exit(int(code))

        # Typer reads the options from the signature: everything but the renderer.
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[1:])
        (group or app).command(command_name)(run)
        return run

    return register


def _short(exc: BaseException) -> str:
    from runpod_manager.events import redact

    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact(text[:200], (os.environ.get("RUNPOD_API_KEY", ""),))


def _lifecycle(config_path: Path | None) -> Lifecycle:
    from runpod_manager.config import load_config
    from runpod_manager.lifecycle import Lifecycle
    from runpod_manager.paths import resolve_paths
    from runpod_manager.ports import wall_clock

    paths = resolve_paths()
    config = load_config(config_path, paths=paths)
    return Lifecycle(config, paths, clock=wall_clock(config))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rpm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Keep a RunPod GPU pod available when you need it and stopped when you don't."""


@command()
def init(
    r: Renderer,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    from_json: Annotated[Path | None, typer.Option("--from", help="Convert an older pod_config.json.",
                                                   dir_okay=False)] = None,
    path: Annotated[Path, typer.Option("--path", help="Where to write.", dir_okay=False)] = Path("pod_config.toml"),
    pods: Annotated[bool, typer.Option("--pods", help="Write a commented example with several pods.")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """Write a commented pod_config.toml (or convert pod_config.json with --from)."""
    from runpod_manager.config import write_config
    from runpod_manager.render import show_init

    if pods and from_json is not None:
        raise UsageError("--pods and --from cannot be used together")
    written, notes = write_config(path, force=force, from_json=from_json, pods=pods)
    show_init(r, written, notes)
    return ExitCode.OK


@command()
def start(
    r: Renderer,
    names: NamesArg = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the pod is created or resumed.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")] = False,
    proxy: Annotated[bool, typer.Option("--proxy/--no-proxy",
                                        help="Also run the local OpenAI-compatible proxy in the background.")] = True,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """Open a lease and start the pod (create or resume); wait until it answers (its model server, or an
    http pod's health_path).

    The proxy's port and bind are checked and the key is read before a lease opens. On a non-zero exit
    (Ctrl-C: 130) the lease is closed and the pod this start asked for is ended, unless the message says it
    is still coming up and what enforces its limits (a running proxy, or the watchdog from cron): then `rpm
    shutdown` ends it.
    """
    from runpod_manager import control
    from runpod_manager.render import show_start, show_starts

    fleet = control.Fleet(_lifecycle(config))
    members = fleet.select(names or (), replicas=False)
    own_proxy = None
    if proxy and not dry_run:
        from runpod_manager.proxy import process

        # Before any lease opens: a port held by something else, or a bind that is refused, fails here.
        own_proxy = process.claim_port(fleet.lead.config, fleet.lead.paths)
    if len(members) > 1:
        try:
            with r.progress("opening the leases…") as progress:
                starts = control.start_many(members, wait=not no_wait, dry_run=dry_run, progress=progress)
        except KeyboardInterrupt:
            raise control.interrupted_start(members) from None
        # The proxy serves the pods that started; a failed pod's lease is closed (control.failed_wait).
        started = [fleet.members[name] for name in starts.results if name not in starts.errors]
        if proxy and not dry_run and started:
            starts.proxy_url = control.ensure_proxy(started, own_proxy)
        show_starts(r, starts)
        return starts.exit_code
    lifecycle = members[0]
    try:
        with r.progress("opening the lease…") as progress:
            result = control.start(lifecycle, wait=not no_wait, dry_run=dry_run, progress=progress)
    except KeyboardInterrupt:
        raise control.interrupted_start(lifecycle) from None
    if proxy and not dry_run:
        result.proxy_url = control.ensure_proxy(lifecycle, own_proxy)
    show_start(r, result)
    return ExitCode.OK


@command()
def status(r: Renderer, names: NamesArg = None, config: ConfigOpt = None, as_json: JsonOpt = False,
           verbose: VerboseOpt = False) -> int:
    """Show each pod, its lease, limits, spend and the proxy; and the account's spend against its cap."""
    from runpod_manager import control
    from runpod_manager.render import show_fleet_status, show_status
    from runpod_manager.status import build_fleet_status, build_status

    fleet = control.Fleet(_lifecycle(config))
    members = fleet.select(names or ())
    if len(fleet.members) == 1:
        show_status(r, build_status(members[0]))
    else:
        show_fleet_status(r, build_fleet_status(fleet, members))
    return ExitCode.OK


@command()
def shutdown(
    r: Renderer,
    names: NamesArg = None,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the pod (keep its disk) instead of terminating.")] = False,
    all_pods: Annotated[bool, typer.Option("--all", help="Also terminate every pod of this rpm install that state "
                                           "does not know (never another install's).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """End everything: stop every proxy of this config, close the lease, terminate (or stop) the pod.

    Exit 0 only when RunPod confirmed it. A non-zero exit (4: RunPod unreachable, 3: the key) means a pod
    may still bill: the message names it; run shutdown again (the watchdog retries too).
    """
    from runpod_manager import control
    from runpod_manager.render import show_shutdown

    fleet = control.Fleet(_lifecycle(config))
    # Named pods: only those (and their replicas) end, and the proxy keeps serving the others.
    show_shutdown(r, control.shutdown(fleet.select(names or ()), stop=stop, all_pods=all_pods, dry_run=dry_run,
                                      stop_proxies=not names))
    return ExitCode.OK


@command("refresh-catalog")
def refresh_catalog(r: Renderer, config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False
                    ) -> int:
    """List GPU types with prices and availability; check every pod of the config against them."""
    from runpod_manager import catalog
    from runpod_manager.render import show_catalog, show_catalogs

    lifecycle = _lifecycle(config)
    pods = lifecycle.config.all_pods
    if len(pods) == 1:
        result = catalog.refresh(lifecycle.client, lifecycle.paths, lifecycle.config)
        show_catalog(r, result)
        return result.exit_code
    results = {pod.name: catalog.refresh(lifecycle.client, lifecycle.paths, lifecycle.config.for_pod(pod.name))
               for pod in pods}
    show_catalogs(r, results)
    return next((result.exit_code for result in results.values() if not result.ok), ExitCode.OK)


@command()
def watchdog(
    r: Renderer,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; call nothing that changes anything.")
                       ] = False,
    report_orphans_only: Annotated[bool, typer.Option("--report-orphans-only",
                                                      help="Report unknown rpm pods instead of terminating them.")
                                   ] = False,
    sweep: Annotated[bool, typer.Option("--sweep", help="List pods for orphans on this pass.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the state lock instead of skipping the pass.")
                    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """One enforcement pass (for cron): limits, idle stop, recovery, orphans. Silent when nothing to do.

    Exit 1: a limit could not be enforced, so a pod may run past it; 3: the key no longer works, so
    nothing can be enforced (every pass says so); 0 also when another rpm holds the lock (pass skipped).
    """
    from runpod_manager import control
    from runpod_manager.render import show_watchdog

    result = control.reconcile(control.Fleet(_lifecycle(config)), wait_seconds=30.0 if wait else 0,
                               dry_run=dry_run, report_orphans_only=report_orphans_only, sweep=sweep, watchdog=True)
    show_watchdog(r, result)
    return result.exit_code


@command()
def proxy(r: Renderer, config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> int:
    """Run the local OpenAI-compatible proxy in the foreground until Ctrl-C or SIGTERM.

    A pod the proxy woke is ended with it (idle_action); a pod `rpm start` started keeps running under its
    lease, and the exit message says until when. Exit 130 after Ctrl-C, 0 after SIGTERM, 1 when the pod it
    woke could not be ended (it may still bill: run `rpm shutdown`).
    """
    from runpod_manager import control
    from runpod_manager.proxy import process
    from runpod_manager.proxy.bridge import LifecycleProxyController
    from runpod_manager.proxy.server import run_proxy
    from runpod_manager.render import show_proxy_stopped

    lifecycle = _lifecycle(config)
    _ = lifecycle.client  # no key: refuse now, not a warning every reconcile forever
    own = process.claim_port(lifecycle.config, lifecycle.paths)
    if own is not None:
        raise UsageError(f"this config's proxy (pid {own}) already serves {process.proxy_url(lifecycle.config)}",
                         hint="use it, or stop it with `rpm shutdown`")
    _configure_logging(verbose)
    with process.registered(lifecycle.paths, process.proxy_url(lifecycle.config)):
        stopped_by = run_proxy(lifecycle.config, LifecycleProxyController(lifecycle), lifecycle.paths)
    outcomes = [control.proxy_stopped(member, stopped_by) for member in control.Fleet(lifecycle).members.values()]
    show_proxy_stopped(r, outcomes, process.proxy_url(lifecycle.config))
    return next((outcome.exit_code for outcome in outcomes if outcome.failed), outcomes[0].exit_code)


@command()
def demo(
    r: Renderer,
    keep_home: Annotated[bool, typer.Option("--keep-home", help="Keep the temporary RPM_HOME for inspection.")
                         ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """Walk through the whole flow on a built-in RunPod emulator (no account needed; no config read)."""
    from runpod_manager.demo import run_demo

    summary = run_demo(r, keep_home=keep_home)
    if as_json:
        r.emit(summary)
    return ExitCode.OK


@command()
def report(
    r: Renderer,
    since: Annotated[str, typer.Option("--since", help="Start of the window: 7d, 24h, 90m, or a date such as "
                                       "2026-01-05 (in the config's timezone).")] = "7d",
    pod: Annotated[str | None, typer.Option("--pod", help="Only this pod (its config name).")] = None,
    html: Annotated[Path | None, typer.Option("--html", metavar="FILE", dir_okay=False,
                                              help="Also write a page with plots (timeline, cumulative cost, "
                                                   "cold-start waits) to FILE.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """What each pod was billed per day, against always-on and an oracle; every cold start and its wait.

    Money comes from RunPod's billing (estimated from GPU hours × $/h, and marked so, when it cannot be read);
    the pod's timeline from the event log; requests and waits from the request log.
    """
    from runpod_manager.config import load_config
    from runpod_manager.paths import resolve_paths
    from runpod_manager.render import show_report
    from runpod_manager.report import run_report
    from runpod_manager.report_html import render_html

    paths = resolve_paths()
    settings = load_config(config, paths=paths, required=False)
    show_report(r, run_report(settings, paths, since_text=since, pod=pod, html=html, render_html=render_html))
    return ExitCode.OK


@command()
def simulate(
    r: Renderer,
    profile: Annotated[str | None, typer.Option("--profile", help="Replay a built-in, synthetic trace: solo (a "
                                                "developer's week), team (five people across time zones) or "
                                                "nightly (a batch).")] = None,
    from_log: Annotated[bool, typer.Option("--from-log", help="Replay the request log (the default when it has "
                                           "requests in --since; else the solo profile).")] = False,
    trace: Annotated[Path | None, typer.Option("--trace", metavar="FILE", dir_okay=False,
                                               help="Replay a JSONL or CSV file: one request per line, `time` "
                                                    "(ISO 8601 or unix seconds), optional `duration_seconds`.")
                     ] = None,
    since: Annotated[str, typer.Option("--since", help="With the request log: how far back (7d, 24h, a date).")
                     ] = "7d",
    pod: Annotated[str | None, typer.Option("--pod", help="With the request log: only this pod's requests.")
                   ] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=366, help="Days of a built-in profile.")] = 7,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the profile, the boot times and the refusals.")] = 0,
    rate: Annotated[float | None, typer.Option("--rate", metavar="USD", help="GPU price per hour (default: the "
                                               "pod's last price, else $0.69).")] = None,
    storage_gb: Annotated[float | None, typer.Option("--storage-gb", help="GB a stopped pod keeps and pays for "
                                                     "(default: [pod] volume_gb).")] = None,
    storage_price: Annotated[float, typer.Option("--storage-usd-per-gb-month",
                                                 help="Price of a stopped pod's storage.")] = 0.20,
    resume_boot: Annotated[str | None, typer.Option("--resume-boot", metavar="MEDIAN[:P95]",
                                                    help="Seconds from resume to the model answering (default: "
                                                         "measured when replaying the log, else 30:75).")] = None,
    fresh_boot: Annotated[str | None, typer.Option("--fresh-boot", metavar="MEDIAN[:P95]",
                                                   help="Seconds from create to the model answering (default: "
                                                        "measured when replaying the log, else 180:420).")] = None,
    refused_resume_rate: Annotated[float, typer.Option("--refused-resume-rate", metavar="P",
                                                       help="Share of resumes RunPod refuses (host GPU taken).")
                                   ] = 0.02,
    idle_timeouts: Annotated[str, typer.Option("--idle-timeouts", metavar="SECONDS,...",
                                               help="Idle timeouts of the sweep (each with stop and terminate).")
                             ] = "60,120,300,600,900,1800,3600",
    recommend: Annotated[bool, typer.Option("--recommend", help="Say which idle setting costs least within "
                                            "--max-p95-wait.")] = False,
    max_p95_wait: Annotated[float | None, typer.Option("--max-p95-wait", metavar="SECONDS",
                                                       help="With --recommend: the p95 cold-start wait allowed "
                                                            "(default: the config's own).")] = None,
    warm_hours: Annotated[str | None, typer.Option("--warm-hours", metavar="WINDOWS",
                                                   help="Add a warm-hours row with these windows, e.g. \"Mon-Fri "
                                                        "08:55-18:00\" (default: [limits] warm_hours).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """Replay a request trace through the real planner under several policies; compare cost and waits.

    Policies: always-on, cron-5min (a watchdog every 5 minutes), rpm (this config), a sweep of idle timeouts
    × {stop, terminate}, warm-hours (with a window), and oracle (knows the future). RunPod is modelled:
    per-second billing, storage while stopped, resume and fresh boot times, refused resumes. Deterministic for
    a --seed.
    """
    from runpod_manager.config import load_config
    from runpod_manager.paths import resolve_paths
    from runpod_manager.render import show_simulation
    from runpod_manager.simulate import run_simulation_command

    paths = resolve_paths()
    show_simulation(r, run_simulation_command(
        load_config(config, paths=paths, required=False), paths, profile=profile, from_log=from_log, trace_file=trace,
        since_text=since, pod=pod, days=days, seed=seed, rate=rate, storage_gb=storage_gb,
        storage_price=storage_price, resume_boot=resume_boot, fresh_boot=fresh_boot,
        refused_resume_rate=refused_resume_rate, idle_timeouts=idle_timeouts, recommend_change=recommend,
        max_p95_wait_seconds=max_p95_wait, warm_hours=warm_hours))
    return ExitCode.OK


keys_app = typer.Typer(name="keys", no_args_is_help=True, rich_markup_mode=None,
                       help="Team keys for the proxy: who may use which pods and models, within which limits.")
app.add_typer(keys_app)


@command("create", group=keys_app)
def keys_create(
    r: Renderer,
    name: Annotated[str, typer.Argument(help="The key's name (lowercase letters, digits, . _ -), shown in logs.")],
    role: Annotated[str, typer.Option("--role", help="user (uses pods) or admin (also manages them).")] = "user",
    pods: Annotated[list[str] | None, typer.Option("--pods", help="Pods it may use (repeat, or comma-separated); "
                                                   "default: every pod.", show_default=False)] = None,
    models: Annotated[list[str] | None, typer.Option("--models", help="Model names it may use (repeat, or "
                                                     "comma-separated); default: every model.",
                                                     show_default=False)] = None,
    rpm_limit: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")] = None,
    tpm_limit: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute (as the model server "
                                                  "reports them).")] = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", min=1, help="Requests at once.")] = None,
    daily_budget_usd: Annotated[float | None, typer.Option("--daily-budget-usd", min=0.0, help="Spend per day "
                                                           "(its share of its pods' $/h).")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="A duration (90m, 12h, 30d, 2w), a date "
                                                "(2027-01-31: through that day, UTC) or an ISO time with a zone.",
                                                show_default=False)] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """Create a key and print its secret, once (with --json: in data.secret). Only its hash is kept."""
    from runpod_manager import keys
    from runpod_manager.config import load_config
    from runpod_manager.paths import resolve_paths
    from runpod_manager.render import show_key_created

    paths = resolve_paths()
    checked_role = keys.parse_role(role)
    keys.check_name(name)
    known_pods, known_models = keys.known_scopes(load_config(config, paths=paths))
    now = datetime.now(UTC)
    created = keys.KeyStore(paths.keys_file).create(
        name, role=checked_role, pods=keys.check_scope("pods", pods or (), known_pods),
        models=keys.check_scope("models", models or (), known_models),
        limits=keys.KeyLimits(requests_per_minute=rpm_limit, tokens_per_minute=tpm_limit,
                              max_concurrent=max_concurrent, daily_budget_usd=daily_budget_usd),
        expires_at=None if expires is None else keys.parse_expires(expires, now), now=now.timestamp())
    show_key_created(r, created)
    return ExitCode.OK


@command("list", group=keys_app)
def keys_list(r: Renderer, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> int:
    """List the keys (never their secrets): role, scopes, limits, expiry, revoked."""
    from runpod_manager.keys import KeyStore
    from runpod_manager.paths import resolve_paths
    from runpod_manager.render import show_keys

    show_keys(r, KeyStore(resolve_paths().keys_file).records(), now=datetime.now(UTC).timestamp())
    return ExitCode.OK


@command("revoke", group=keys_app)
def keys_revoke(r: Renderer, name: Annotated[str, typer.Argument(help="The key's name.")],
                as_json: JsonOpt = False, verbose: VerboseOpt = False) -> int:
    """Revoke a key: a running proxy refuses it within a second. Its usage stays in `rpm keys usage`."""
    from runpod_manager.keys import KeyStore
    from runpod_manager.paths import resolve_paths
    from runpod_manager.render import show_key_revoked

    show_key_revoked(r, KeyStore(resolve_paths().keys_file).revoke(name, now=datetime.now(UTC).timestamp()))
    return ExitCode.OK


@command("usage", group=keys_app)
def keys_usage(r: Renderer, name: Annotated[str | None, typer.Argument(help="One key; none: every key.",
                                                                         show_default=False)] = None,
               config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> int:
    """Requests, tokens and spend today per key (the config's day, as the spend cap's), and when last used."""
    from runpod_manager.config import load_config
    from runpod_manager.keys import usage_report
    from runpod_manager.paths import resolve_paths
    from runpod_manager.render import show_key_usage

    paths = resolve_paths()
    zone = load_config(config, paths=paths).zone
    show_key_usage(r, usage_report(paths, name=name, now=datetime.now(UTC).timestamp(), zone=zone))
    return ExitCode.OK


def _configure_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register_optional() -> None:
    try:
        from runpod_manager.sandbox.command import register
    except ImportError:  # pragma: no cover - the sandbox ships with the package
        return
    register(app)


_register_optional()


def main() -> None:
    try:
        app()
    except UsageError as exc:  # pragma: no cover - commands map their own errors
        Renderer("rpm").error(exc, int(exc.exit_code))
        sys.exit(int(exc.exit_code))
