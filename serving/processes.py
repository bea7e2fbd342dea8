"""Server processes started by alloynet's scripts and fixtures: stopped by the PID in their pid file.

Each server runs in its own process group (``start_new_session=True``), so stopping the group also
stops what it spawned (TorchServe's Python workers, Triton's Python-backend stubs).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def wait_gone(pid: int, wait: float) -> bool:
    """True once the process (group) ``pid`` has exited, polling for at most ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # started by another process (e.g. a CLI call): poll the group instead
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.1)
    return False


def stop_group(pid_file: Path, timeout: float = 20.0) -> None:
    """SIGTERM the group recorded in ``pid_file``, SIGKILL it after ``timeout`` s; remove the pid file."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        if wait_gone(pid, wait):
            break
    pid_file.unlink(missing_ok=True)


def wait_ready(probe: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str, log: Path,
               interval: float = 0.3) -> None:
    """Poll ``probe`` until it returns True; fail early (with the log's tail) if the process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}:\n{tail}")
        try:
            if probe():
                return
        except Exception as exc:  # not listening yet, or models/workers still loading
            last = str(exc)
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s ({last}); see {log}")
