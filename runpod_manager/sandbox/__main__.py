"""`python -m runpod_manager.sandbox [flags]`: run the RunPod v2 emulator (same flags as `rpm sandbox`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from runpod_manager.sandbox.server import DEFAULT_API_KEY, DEFAULT_PORT, SandboxOptions, run_command


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags get one line on stderr and exit 2, like bad values do and like every rpm command's errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (run with --help for the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m runpod_manager.sandbox",
                            description="Run rpm's RunPod REST v2 emulator (pods, billing, fake vLLM, fake services).")
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    add("--api-key", default=DEFAULT_API_KEY, help=f"the account's API key (default {DEFAULT_API_KEY})")
    add("--provision-seconds", type=float, default=1.0, help="PROVISIONING → STARTING (default 1.0)")
    add("--start-seconds", type=float, default=1.5, help="STARTING → RUNNING (default 1.5)")
    add("--model-load-seconds", type=float, default=2.0, help="RUNNING → model answers (default 2.0)")
    add("--token-delay", type=float, default=0.02, help="seconds per generated token (default 0.02)")
    add("--service-progress-seconds", type=float, default=1.0, metavar="SECONDS",
        help="between a fake service's /ws progress frames (default 1; 0 sends none)")
    add("--bill-speed", type=float, default=1.0, help="billing clock multiplier (default 1)")
    add("--balance", type=float, default=1000.0, help="account balance in USD (default 1000)")
    add("--fail-creates", type=int, default=0, metavar="N", help="the next N creates fail for capacity")
    add("--refuse-resumes", type=int, default=0, metavar="N", help="the next N starts are refused")
    add("--rate-limit", type=int, default=0, metavar="N", help="the next N API calls get 429")
    add("--error-rate", type=float, default=0.0, metavar="P", help="probability of a 5xx on any API call")
    add("--latency", type=float, default=0.0, metavar="SECONDS", help="added to every API call")
    add("--quota-per-minute", type=int, default=6000, help="rate-limit quota per minute (default 6000)")
    add("--state", type=Path, default=None, metavar="FILE", help="keep the world in FILE across restarts")
    add("--quiet", action="store_true", help="no request log on stderr")
    add("--seed", type=int, default=None, help="seed for pod ids and injected faults")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = SandboxOptions(
        host=args.host, port=args.port, api_key=args.api_key, provision_seconds=args.provision_seconds,
        start_seconds=args.start_seconds, model_load_seconds=args.model_load_seconds,
        token_delay_seconds=args.token_delay, service_progress_seconds=args.service_progress_seconds,
        bill_speed=args.bill_speed, balance_usd=args.balance,
        fail_creates=args.fail_creates, refuse_resumes=args.refuse_resumes, rate_limit=args.rate_limit,
        error_rate=args.error_rate, latency_seconds=args.latency, quota_per_minute=args.quota_per_minute,
        state_file=args.state, quiet=args.quiet, seed=args.seed,
    )
    return run_command(options)


if __name__ == "__main__":
    sys.exit(main())
