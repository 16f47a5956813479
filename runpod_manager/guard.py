"""The in-pod deadline guard (`[limits] pod_guard = true`).

RunPod REST v2 has no create-time stop/terminate deadline, so a pod that must end on time even when the
user's machine is asleep has to remove itself. The guard is a background process started by the pod's
own start command: it sleeps until the lease deadline (an absolute epoch, so a restart does not reset
it) and then deletes the pod through the API with the pod-scoped key RunPod puts in the pod's
environment (`RUNPOD_API_KEY`, `RUNPOD_POD_ID`).

It needs an image whose start command is run by a shell and which has python3 (e.g. the runpod/pytorch
images); the official vllm/vllm-openai image has a fixed entrypoint and cannot carry it. On resume, rpm
rewrites the pod's args (PATCH) so the guard follows the new lease's deadline.
"""

from __future__ import annotations

import math
import shlex
from datetime import datetime

from runpod_manager import display

# The vLLM server started after the guard when [pod] args is empty.
VLLM_COMMAND = "python3 -m vllm.entrypoints.openai.api_server"


def guard_command(deadline: datetime, api_base_url: str) -> str:
    # Rounded up: a guard that fires before the lease deadline would look like a lost pod to rpm, which
    # would then create a replacement for the last fraction of a second.
    epoch = math.ceil(deadline.timestamp())
    script = (
        "import os,time,urllib.request as u\n"
        f"time.sleep(max(0.0,{epoch}-time.time()))\n"
        # The URL as shown (display.url): the pod's args are visible in the console, so no key of the URL goes
        # there; the guard authenticates with the pod's own key.
        f"r=u.Request({display.url(api_base_url).rstrip('/')!r}+'/v2/pods/'+os.environ['RUNPOD_POD_ID'],"
        "method='DELETE',"
        "headers={'Authorization':'Bearer '+os.environ['RUNPOD_API_KEY']})\n"
        "u.urlopen(r,timeout=30)\n"
    )
    return f"python3 -c {shlex.quote(script)} >/dev/null 2>&1 &"


def wrap(command: str, *, deadline: datetime, api_base_url: str, is_vllm_args: bool = False) -> str:
    """`sh -c '<guard> & exec <command>'`; vLLM arguments are prefixed with the vLLM server command."""
    main = f"{VLLM_COMMAND} {command}" if is_vllm_args else command
    inner = f"{guard_command(deadline, api_base_url)} exec {main}"
    return "sh -c " + shlex.quote(inner)


def is_guarded(args: str) -> bool:
    return args.startswith("sh -c ") and "RUNPOD_POD_ID" in args
