"""Server processes started by alloynet's scripts and fixtures: stopped by the PID in their pid file.

Each server runs in its own process group (``start_new_session=True``), so stopping the group also
stops what it spawned (TorchServe's Python workers, Triton's Python-backend stubs).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


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
