"""Health: each started server probed every ``health_every_s`` in a thread; one that misses ``hang_after``
probes in a row counts as hung, and the loop restarts it."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Protocol


class Probed(Protocol):
    pid: int | None

    def probe(self, timeout: float) -> bool: ...


class Health:
    def __init__(self, servers: Mapping[str, Probed], every_s: float, hang_after: int):
        self.servers, self.every_s, self.hang_after = servers, every_s, hang_after
        self.unanswered: dict[str, int] = {}  # consecutive health probes without an answer, per server
        self.restarting: set[str] = set()  # not probed meanwhile: a restart is not a hang

    def answers(self, name: str) -> bool:
        try:
            return self.servers[name].probe(self.every_s)
        except Exception:
            return False

    def probe_all(self) -> None:
        """One round: each started server that is not being restarted is probed once."""
        for name, server in list(self.servers.items()):
            if server.pid is None or name in self.restarting:
                continue
            answered = self.answers(name)
            if name not in self.restarting:  # a restart began meanwhile: its probe says nothing
                self.unanswered[name] = 0 if answered else self.unanswered.get(name, 0) + 1

    def watch(self, stopping: threading.Event) -> None:
        """A thread's body: a round of probes every ``every_s`` until ``stopping``."""
        while not stopping.wait(self.every_s):
            self.probe_all()

    def hung(self, name: str) -> bool:
        return self.unanswered.get(name, 0) >= self.hang_after

    def restarted(self, name: str) -> None:
        self.unanswered[name] = 0
        self.restarting.discard(name)
