"""The one error tree: every expected failure is an RpmError with a message written for the user.

The CLI maps each class to an ExitCode in one place (cli.main); nothing else decides exit codes.
Messages say what happened, which file/key/pod, and what to do. They never carry secrets.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Stable exit codes, documented in the README."""

    OK = 0
    FAILED = 1
    USAGE = 2
    AUTH = 3
    API = 4
    CAPACITY = 5
    BUSY = 6
    INTERRUPTED = 130


class RpmError(Exception):
    """Base of every expected failure. `hint` is an optional 'what to do' sentence."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(RpmError):
    """pod_config.toml is missing, malformed or holds an impossible value."""

    exit_code = ExitCode.USAGE


class UsageError(RpmError):
    """A command was called with options that cannot work together."""

    exit_code = ExitCode.USAGE


class StateError(RpmError):
    """pod_state.json is corrupt, unreadable or from a newer rpm."""

    exit_code = ExitCode.FAILED


class LockBusy(RpmError):
    """Another rpm process holds the state lock."""

    exit_code = ExitCode.BUSY

    def __init__(self, message: str, *, holder_pid: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder_pid = holder_pid


class Interrupted(RpmError):
    """Ctrl-C (SIGINT): the message says what still runs."""

    exit_code = ExitCode.INTERRUPTED


class NotOwned(RpmError):
    """An action only rpm's own pods take (terminate) was asked of an adopted pod (`pod_id = …`)."""

    exit_code = ExitCode.USAGE


class LimitRefused(RpmError):
    """A limit (spend cap, daily cutoff) forbids starting or waking the pod right now."""

    exit_code = ExitCode.FAILED


class NotReady(RpmError):
    """The pod did not become ready (RUNNING and the model server answering) in time."""

    exit_code = ExitCode.FAILED


class StopRefused(RpmError):
    """RunPod refused to stop a pod that a fresh look shows still running (and billing): the pod's own state
    blocks the stop. Not an API failure, so not exit 4: the pass failed to enforce a limit (exit 1)."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, *, pod_id: str = "", status: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.pod_id = pod_id
        self.status = status


class PodLocked(StopRefused):
    """The pod is locked (RunPod's `locked`: a locked pod cannot be stopped or reset) while it runs."""


class BootFailed(NotReady):
    """The pod kept failing while it started (ERROR, gone) past `max_startup_attempts`: a start that gives up on it
    closes its lease whatever would enforce limits afterwards, or that enforcer would go on recovering (creating)
    for a start that gave up."""


class LeaseClosed(NotReady):
    """The lease was closed (a stop, a shutdown, a limit) while a start waited for the pod to be ready: the
    wait ends, but nothing failed; a new start opens a new lease."""


class ApiError(RpmError):
    """RunPod (or the emulator) answered with an error, or could not be reached."""

    exit_code = ExitCode.API

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        field_errors: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.detail = detail
        self.field_errors = field_errors


class AuthError(ApiError):
    """401 (missing/bad key) or 403 (key lacks permission)."""

    exit_code = ExitCode.AUTH


class NotFound(ApiError):
    """404: the pod (or resource) does not exist."""


class Conflict(ApiError):
    """409: the action is not allowed in the pod's current status."""


class InvalidRequest(ApiError):
    """422 or a rule-breaking 400: the request rpm built from the config was rejected."""

    exit_code = ExitCode.USAGE


class NoCapacity(ApiError):
    """No machine can take the pod right now (RunPod's 'no longer any instances available')."""

    exit_code = ExitCode.CAPACITY


class ResumeRefused(NoCapacity):
    """Start of a stopped pod refused: its host's GPU was rented meanwhile."""


class InsufficientBalance(ApiError):
    """402: the account balance is too low to rent a pod."""

    exit_code = ExitCode.CAPACITY


class RateLimited(ApiError):
    """429 after our retries ran out."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after_seconds = retry_after_seconds


class ApiUnavailable(ApiError):
    """5xx, timeout or connection failure after our retries ran out."""
