"""`rpm sandbox`: the Typer command that runs the RunPod v2 emulator (flags as `python -m ...sandbox`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Duplicated from sandbox.server (a test checks they agree) so that registering this command does not import
# aiohttp: every `rpm` invocation, including the cron watchdog, would pay ~0.3 s for it.
DEFAULT_PORT = 8787
DEFAULT_API_KEY = "sandbox-key"


def register(app: typer.Typer) -> None:
    """Add the `sandbox` command to rpm's Typer app."""

    @app.command("sandbox")
    def sandbox(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = DEFAULT_PORT,
        api_key: Annotated[str, typer.Option(help="The account's API key.")] = DEFAULT_API_KEY,
        provision_seconds: Annotated[float, typer.Option(help="PROVISIONING → STARTING.")] = 1.0,
        start_seconds: Annotated[float, typer.Option(help="STARTING → RUNNING.")] = 1.5,
        model_load_seconds: Annotated[float, typer.Option(help="RUNNING → model answers.")] = 2.0,
        token_delay: Annotated[float, typer.Option(help="Seconds per generated token.")] = 0.02,
        service_progress_seconds: Annotated[float, typer.Option(
            help="Seconds between a fake service's /ws progress frames; 0 sends none.")] = 1.0,
        bill_speed: Annotated[float, typer.Option(help="Billing clock multiplier.")] = 1.0,
        balance: Annotated[float, typer.Option(help="Account balance in USD.")] = 1000.0,
        fail_creates: Annotated[int, typer.Option(metavar="N", help="Next N creates fail (capacity).")] = 0,
        refuse_resumes: Annotated[int, typer.Option(metavar="N", help="The next N starts are refused.")] = 0,
        rate_limit: Annotated[int, typer.Option(metavar="N", help="The next N API calls get 429.")] = 0,
        error_rate: Annotated[float, typer.Option(metavar="P", help="Chance of a 5xx per API call.")] = 0.0,
        latency: Annotated[float, typer.Option(metavar="SECONDS", help="Added to every API call.")] = 0.0,
        quota_per_minute: Annotated[int, typer.Option(help="Rate-limit quota per minute.")] = 6000,
        state: Annotated[Path | None, typer.Option(metavar="FILE", help="Keep the world in FILE.")] = None,
        quiet: Annotated[bool, typer.Option(help="No request log on stderr.")] = False,
        seed: Annotated[int | None, typer.Option(help="Seed for pod ids and injected faults.")] = None,
    ) -> None:
        """Run a local emulator of RunPod's REST v2 API with fake vLLM pods (no account needed).

        A pod whose image name does not contain "vllm" runs a fake generic HTTP/WebSocket service instead.
        """
        from runpod_manager.sandbox.server import SandboxOptions, run_command

        options = SandboxOptions(
            host=host, port=port, api_key=api_key, provision_seconds=provision_seconds,
            start_seconds=start_seconds, model_load_seconds=model_load_seconds,
            token_delay_seconds=token_delay, service_progress_seconds=service_progress_seconds,
            bill_speed=bill_speed, balance_usd=balance,
            fail_creates=fail_creates, refuse_resumes=refuse_resumes, rate_limit=rate_limit,
            error_rate=error_rate, latency_seconds=latency,
            quota_per_minute=quota_per_minute, state_file=state, quiet=quiet, seed=seed,
        )
        raise typer.Exit(run_command(options))
