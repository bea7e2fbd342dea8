"""Server processes that alloynet's scripts and fixtures start: SeaweedFS, Prefect, TorchServe, Triton.

One implementation of the lifecycle for all of them (infra/ imports it too): free loopback ports, the
binary next to the interpreter or on PATH, readiness polling that fails early when the process dies,
and stop-by-PID of the whole process group. Every server runs in its own process group
(``start_new_session=True``), so stopping the group also stops what it spawned (TorchServe's Python
workers, Triton's backend stubs, Prefect's flow-run subprocesses).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from serving.binaries import find_binary  # noqa: F401  (serving owns it; infra's modules find it here too)

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class PortInUse(RuntimeError):
    """A port a server was asked to listen on is taken (by another stack, or anything else)."""


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as servers set it: connections of a
    server that just stopped, lingering in TIME_WAIT, do not make its port taken for the next one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def listening_pids(port: int) -> set[int]:
    """PIDs of the processes with a TCP socket listening on ``port`` (Linux /proc; empty elsewhere or when
    the owners' /proc entries cannot be read)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f[9])
    pids: set[int] = set()
    if not inodes:
        return pids
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pids.add(int(proc.name))
                    break
        except OSError:
            continue
    return pids


def describe_pid(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({' '.join(cmd.split())[:120]})"


def check_ports_free(wanted: dict[int, str]) -> None:
    """Raise PortInUse naming every taken port, what it was meant for and who holds it, before anything starts."""
    taken = []
    for port, what in wanted.items():
        if not 0 < port < 65536:
            taken.append(f"port {port} ({what}) is out of range (1-65535)")
        elif not port_free(port):
            holders = ", ".join(describe_pid(p) for p in sorted(listening_pids(port))) or "another process"
            taken.append(f"port {port} ({what}) is in use by {holders}")
    if taken:
        raise PortInUse(
            "; ".join(taken) + ". Nothing was started: pick free ports (infra/up.sh --port N --s3-port M) "
            "or stop what holds them."
        )


def served_by(port: int, group_leader: int) -> bool:
    """Whether the process listening on ``port`` belongs to the process group led by ``group_leader`` (a
    server we started with start_new_session=True). True when /proc cannot tell (not Linux)."""
    if not Path("/proc/net/tcp").exists():
        return True
    for pid in listening_pids(port):
        try:
            if os.getpgid(pid) == group_leader:
                return True
        except OSError:
            continue
    return False


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (exited, not yet reaped) counts as gone and is reaped if ours."""
    if pid <= 0:  # kill(0)/waitpid(0) would mean our own process group, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:  # not our child: ask /proc whether it is a zombie
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False


def tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(
    probe: Callable[[], bool], pid: int, timeout: float, what: str, log: str | Path, interval: float = 0.3
) -> None:
    """Poll ``probe`` until it returns True; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive(pid):
            raise RuntimeError(f"{what} exited during start-up; see {log}:\n{tail(log)}")
        try:
            if probe():
                return
        except Exception as exc:  # not listening yet, or models/workers still loading
            last = str(exc)
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s ({last}); see {log}:\n{tail(log)}")


def stop_group(pid: int, timeout: float = 20.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` (SIGTERM; PostgreSQL wants SIGINT) to the process group led by ``pid``, wait for the
    leader, then SIGKILL whatever is left in the group. Returns True when the leader exited on ``sig``
    within ``timeout`` (a clean stop)."""
    if pid <= 1:  # killpg(0) would signal our own group, killpg(1) init's
        raise ValueError(f"refusing to signal process group {pid}")
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    clean = not alive(pid)
    try:  # leftovers in the group (workers, stubs, flow-run subprocesses) go too
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return clean
    deadline = time.monotonic() + 5.0
    while alive(pid) and time.monotonic() < deadline:  # alive() reaps our own child: no zombie left behind
        time.sleep(0.05)
    return clean


def tagged_processes(name: str, value: str) -> list[int]:
    """PIDs of the live processes whose environment holds ``name=value`` (a tag set when they were started,
    inherited by everything they spawn): finds what a crashed parent left behind, whatever its process group."""
    needle = f"{name}={value}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0") and alive(int(d.name)):
                found.append(int(d.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return sorted(found)


def stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM each process, wait up to ``timeout`` for all of them, SIGKILL the rest."""
    pids = [p for p in pids if p > 1]  # kill(0)/kill(-1) would mean our own group / every process
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_group(pid: int) -> None:
    """SIGKILL whatever is left in the process group led (once) by ``pid``; the leader may be gone already."""
    if pid <= 1:  # killpg(0) would signal our own group, killpg(1) init's
        raise ValueError(f"refusing to signal process group {pid}")
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_pid_file(pid_file: Path, timeout: float = 20.0) -> bool:
    """Stop the group whose leader's PID is in ``pid_file`` (a bare integer); remove the file."""
    if not pid_file.exists():
        return True
    clean = stop_group(int(pid_file.read_text()), timeout)
    pid_file.unlink(missing_ok=True)
    return clean
