"""What the simulated RunPod refuses: `WorldError(status, detail)`, which the API layer renders as an
RFC 9457 problem body, and the sentences RunPod itself sends for the refusals clients match on."""

from __future__ import annotations

from typing import ClassVar

# The sentences RunPod itself sends (runpod-api.md section 6); clients match on them.
NO_CAPACITY_DETAIL = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
RESUME_REFUSED_DETAIL = "There are not enough free GPUs on the host machine to start this pod."
LOW_BALANCE_DETAIL = "Your account balance is too low to rent a pod. Please add funds to your account."


class WorldError(Exception):
    """A refusal RunPod answers with an RFC 9457 problem body."""

    TITLES: ClassVar[dict[int, str]] = {
        400: "Bad Request", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
        409: "Conflict", 422: "Unprocessable Entity",
    }

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def title(self) -> str:
        return self.TITLES.get(self.status, "Error")
