"""The `rpm` command: each command parses its options, calls one core function and renders the result.

Errors are mapped to exit codes in one place (`_run`): an RpmError exits with its ExitCode and a
one-line message; anything unexpected shows a short message (RPM_DEBUG=1 re-raises with the traceback).
Rich's traceback-with-locals is disabled: locals may hold keys.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from runpod_manager import __version__
from runpod_manager.errors import ExitCode, RpmError, UsageError
from runpod_manager.render import Renderer

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

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document (the versioned envelope).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say more.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $RPM_CONFIG, ./pod_config.toml, user config dir).",
                 dir_okay=False),
]


def _run(renderer: Renderer, body: Callable[[], T]) -> T:
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


def _short(exc: BaseException) -> str:
    from runpod_manager.events import redact

    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact(text[:200], (os.environ.get("RUNPOD_API_KEY", ""),))


def _lifecycle(config_path: Path | None) -> Any:
    from runpod_manager.config import load_config
    from runpod_manager.lifecycle import Lifecycle
    from runpod_manager.paths import resolve_paths
    from runpod_manager.proxy import process

    paths = resolve_paths()
    config = load_config(config_path, paths=paths)
    return Lifecycle(config, paths, proxy_alive=lambda: process.running_pid(paths))


def _notices(renderer: Renderer, lifecycle: Any) -> None:
    for notice in lifecycle.store.notices:
        renderer.note(notice)


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


@app.command()
def init(
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    from_json: Annotated[Path | None, typer.Option("--from", help="Convert an older pod_config.json.",
                                                   dir_okay=False)] = None,
    path: Annotated[Path, typer.Option("--path", help="Where to write.", dir_okay=False)] = Path("pod_config.toml"),
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write a commented pod_config.toml (or convert pod_config.json with --from)."""
    renderer = Renderer("init", as_json, verbose)

    def body() -> None:
        from runpod_manager.config import write_config

        written, notes = write_config(path, force=force, from_json=from_json)
        from runpod_manager.render import show_init

        show_init(renderer, written, notes)

    _run(renderer, body)


@app.command()
def start(
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the pod is created or resumed.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")] = False,
    proxy: Annotated[bool, typer.Option("--proxy/--no-proxy",
                                        help="Also run the local OpenAI-compatible proxy in the background.")] = True,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Open a lease and start the pod (create or resume); wait until the model answers.

    The proxy's port and bind are checked and the key is read before a lease opens. On a non-zero exit the
    lease is closed and nothing runs, unless the message says the pod is still coming up (not ready in
    time, exit 1; Ctrl-C, 130): then it keeps to its limits and `rpm shutdown` ends it.
    """
    renderer = Renderer("start", as_json, verbose)

    def body() -> None:
        from runpod_manager.render import show_start

        lifecycle = _lifecycle(config)
        own_proxy = None
        if proxy and not dry_run:
            from runpod_manager.proxy import process

            # Before any lease opens: a port held by something else, or a bind that is refused, fails here.
            own_proxy = process.claim_port(lifecycle.config, lifecycle.paths)
        try:
            with renderer.progress("opening the lease…") as progress:
                result = lifecycle.start(wait=not no_wait, dry_run=dry_run, progress=progress)
        except KeyboardInterrupt:
            raise lifecycle.interrupted_start() from None
        _notices(renderer, lifecycle)
        if proxy and not dry_run:
            result.proxy_url = lifecycle.ensure_proxy(own_proxy)
        show_start(renderer, result)

    _run(renderer, body)


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Show the pod, its lease, limits, spend and the proxy."""
    renderer = Renderer("status", as_json, verbose)

    def body() -> None:
        from runpod_manager.render import show_status

        lifecycle = _lifecycle(config)
        result = lifecycle.status()
        _notices(renderer, lifecycle)
        show_status(renderer, result)

    _run(renderer, body)


@app.command()
def shutdown(
    stop: Annotated[bool, typer.Option("--stop", help="Stop the pod (keep its disk) instead of terminating.")] = False,
    all_pods: Annotated[bool, typer.Option("--all", help="Also terminate every rpm- pod that state does not know.")
                        ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """End everything: stop every proxy of this config, close the lease, terminate (or stop) the pod.

    Exit 0 only when RunPod confirmed it. A non-zero exit (4: RunPod unreachable, 3: the key) means a pod
    may still bill: the message names it; run shutdown again (the watchdog retries too).
    """
    renderer = Renderer("shutdown", as_json, verbose)

    def body() -> None:
        from runpod_manager.render import show_shutdown

        lifecycle = _lifecycle(config)
        result = lifecycle.shutdown(stop=stop, all_pods=all_pods, dry_run=dry_run)
        _notices(renderer, lifecycle)
        show_shutdown(renderer, result)

    _run(renderer, body)


@app.command("refresh-catalog")
def refresh_catalog(config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List GPU types with prices and availability; check the config against them."""
    renderer = Renderer("refresh-catalog", as_json, verbose)

    def body() -> None:
        from runpod_manager import catalog
        from runpod_manager.render import show_catalog

        lifecycle = _lifecycle(config)
        result = catalog.refresh(lifecycle.client, lifecycle.paths, lifecycle.config)
        show_catalog(renderer, result)
        if not result.ok:
            raise typer.Exit(int(ExitCode.FAILED))

    _run(renderer, body)


@app.command()
def watchdog(
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
) -> None:
    """One enforcement pass (for cron): limits, idle stop, recovery, orphans. Silent when nothing to do.

    Exit 1: a limit could not be enforced, so a pod may run past it; 3: the key no longer works, so
    nothing can be enforced (every pass says so); 0 also when another rpm holds the lock (pass skipped).
    """
    renderer = Renderer("watchdog", as_json, verbose)

    def body() -> None:
        from runpod_manager.render import show_watchdog

        lifecycle = _lifecycle(config)
        result = lifecycle.reconcile(wait_seconds=30.0 if wait else 0, dry_run=dry_run,
                                     report_orphans_only=report_orphans_only, sweep=sweep)
        show_watchdog(renderer, result)
        auth_error = result.auth_error
        if auth_error is not None:
            # A key that stopped working is an alarm on every pass: nothing can be enforced with it.
            if as_json:
                raise typer.Exit(int(auth_error.exit_code))  # the envelope already carries the error
            raise auth_error
        if result.enforcement_failed:
            raise typer.Exit(int(ExitCode.FAILED))

    _run(renderer, body)


@app.command()
def proxy(config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Run the local OpenAI-compatible proxy in the foreground until Ctrl-C or SIGTERM.

    A pod the proxy woke is ended with it (idle_action); a pod `rpm start` started keeps running under its
    lease, and the exit message says until when. Exit 130 after Ctrl-C, 0 after SIGTERM, 1 when the pod it
    woke could not be ended (it may still bill: run `rpm shutdown`).
    """
    renderer = Renderer("proxy", as_json, verbose)

    def body() -> None:
        from runpod_manager.lifecycle import LifecycleProxyController
        from runpod_manager.proxy import process
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
        outcome = lifecycle.proxy_stopped()
        show_proxy_stopped(renderer, outcome, process.proxy_url(lifecycle.config))
        if outcome.failed:
            raise typer.Exit(int(ExitCode.FAILED))
        if stopped_by == "SIGINT":
            raise typer.Exit(int(ExitCode.INTERRUPTED))

    _run(renderer, body)


@app.command()
def demo(
    keep_home: Annotated[bool, typer.Option("--keep-home", help="Keep the temporary RPM_HOME for inspection.")
                         ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Walk through the whole flow on a built-in RunPod emulator (no account needed; no config read)."""
    renderer = Renderer("demo", as_json, verbose)

    def body() -> None:
        from runpod_manager.demo import run_demo

        summary = run_demo(renderer, keep_home=keep_home)
        if as_json:
            renderer.emit(summary)

    _run(renderer, body)


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
