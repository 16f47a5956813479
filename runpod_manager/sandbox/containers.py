"""Container commands: the `sh -c ...` / `bash -c ...` args of RUNNING pods run as real processes, which
the server reconciles with the world from a small background tick (and right after each change)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from runpod_manager.sandbox.pods import Pod, PodStatus
from runpod_manager.sandbox.world import World


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    generation: int
    output_path: Path
    offset: int = 0
    exit_reported: bool = False
    killed_at: float | None = None  # time.monotonic() of the first kill signal


class ContainerRunner:
    """Runs the `sh -c` / `bash -c` command of every RUNNING pod as a real process group.

    `sync` reconciles what runs with what the world says should run: it starts commands of pods that
    reached RUNNING (or were restarted), kills the process groups of pods that stopped or vanished, and
    copies their output into the pods' container logs.
    """

    KILL_GRACE_SECONDS = 2.0

    def __init__(self, api_url: str = "") -> None:
        self.api_url = api_url
        self._processes: dict[str, _Process] = {}
        self._dying: list[_Process] = []
        self._failed: dict[str, int] = {}  # pod id -> generation whose command could not start
        self._output_dir = Path(tempfile.mkdtemp(prefix="rpm-sandbox-containers-"))

    def pids(self) -> dict[str, int]:
        return {pod_id: proc.popen.pid for pod_id, proc in self._processes.items()}

    def sync(self, world: World) -> None:
        world.advance()
        wanted: dict[str, Pod] = {}
        for pod in world.pods.values():
            if pod.status == PodStatus.RUNNING and pod.container_command():
                wanted[pod.id] = pod
        for pod_id, proc in list(self._processes.items()):
            self._collect(world, pod_id, proc)
            wanted_pod = wanted.get(pod_id)
            if wanted_pod is None or wanted_pod.container_generation != proc.generation:
                del self._processes[pod_id]
                self._kill(proc, signal.SIGTERM)
            elif proc.popen.poll() is not None and not proc.exit_reported:
                proc.exit_reported = True  # exited on its own: report once, do not restart it
                code = proc.popen.returncode
                world.add_container_output(pod_id, [f"container command exited with code {code}"])
        for pod_id, pod in wanted.items():
            if pod_id not in self._processes and self._failed.get(pod_id) != pod.container_generation:
                self._start(world, pod)
        self._reap()

    def _start(self, world: World, pod: Pod) -> None:
        command = pod.container_command()
        assert command is not None  # noqa: S101 - sync only starts pods that have one
        # A container does not inherit the host's environment; only what finds programs and temp space.
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
        env.update(pod.env)
        env.update({"RUNPOD_POD_ID": pod.id, "RUNPOD_API_KEY": pod.pod_key, "RUNPOD_API_URL": self.api_url,
                    "RUNPOD_GPU_COUNT": str(pod.gpu_count), "RUNPOD_DC_ID": pod.data_center_id})
        output_path = self._output_dir / f"{pod.id}-{pod.container_generation}.log"
        with output_path.open("wb") as output:
            try:
                popen = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=output,  # noqa: S603
                                         stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                world.add_container_output(pod.id, [f"container command failed to start: {exc.strerror}"])
                self._failed[pod.id] = pod.container_generation
                return
        self._processes[pod.id] = _Process(popen, pod.container_generation, output_path)
        world.add_container_output(pod.id, [f"container command started: {' '.join(command[:2])} ..."])

    def _collect(self, world: World, pod_id: str, proc: _Process) -> None:
        try:
            with proc.output_path.open("rb") as output:
                output.seek(proc.offset)
                chunk = output.read(1 << 20)
        except OSError:
            return
        complete = chunk.rpartition(b"\n")[0]
        if complete:
            proc.offset += len(complete) + 1
            lines = complete.decode("utf-8", "replace").splitlines()
            world.add_container_output(pod_id, lines)

    def _kill(self, proc: _Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)
        if proc not in self._dying:
            proc.killed_at = time.monotonic()
            self._dying.append(proc)

    def _reap(self) -> None:
        for proc in list(self._dying):
            if proc.popen.poll() is not None:
                # The shell may be gone while its children live on in the group: finish them too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                self._dying.remove(proc)
                with contextlib.suppress(OSError):
                    proc.output_path.unlink()
            elif proc.killed_at is not None and time.monotonic() - proc.killed_at > self.KILL_GRACE_SECONDS:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill every container process group (the sandbox is exiting)."""
        for proc in self._processes.values():
            self._kill(proc, signal.SIGTERM)
        self._processes.clear()
        deadline = time.monotonic() + 1.0
        while self._dying and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for proc in self._dying:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1.0)
        self._dying.clear()
        for leftover in self._output_dir.glob("*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            self._output_dir.rmdir()
