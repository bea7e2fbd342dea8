"""The line's record: every answer served to the line, append-only JSONL partitioned by day in a store.

Layout: ``line/records/<YYYY-MM-DD>/<writer>-<chunk>.jsonl``, one JSON object per line (``RECORD_FIELDS``).
Objects are never rewritten: a local store appends to its writer's file for the day (each batch is one
``write``, so a killed process loses only what it had not handed to the kernel); any other store (S3) gets a
new chunk object per flush, so there a kill loses what arrived since the last flush (``flush_s``).

Standard library plus the store interface only: the serving client imports this.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from alloynet.captures.stores import LocalStore, ObjectStore, open_store
from alloynet.contract import ANSWER_FIELDS

RECORDS = "line/records/"
RECORD_VERSION = 1
# What one record holds; "source" is "line" for an answer the line was given, "nightly" for a capture scored
# after the fact because the line recorded no answer for it.
RECORD_FIELDS = (
    "v",
    "at",
    "source",
    "capture_id",
    "image_sha256",
    "server",
    "model",
    "model_version",
    *ANSWER_FIELDS,
    "latency_ms",
    "batch",
    "error",
    "scored_at",
)


def day_prefix(day: date) -> str:
    return f"{RECORDS}{day.isoformat()}/"


def _writer_id() -> str:
    host = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Journal:
    """Appends records to a store, one day's partition at a time. Not thread-safe: one writer thread owns it."""

    def __init__(self, store: ObjectStore | str, writer: str | None = None):
        self.store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
        self.writer = writer or _writer_id()
        self._chunk = 0
        self._fds: dict[str, int] = {}

    def write(self, records: Iterable[dict[str, Any]]) -> int:
        """Append ``records`` (each with an ISO ``at``) to their days' partitions; returns how many."""
        by_day: dict[str, list[str]] = {}
        n = 0
        for r in records:
            by_day.setdefault(str(r["at"])[:10], []).append(json.dumps(r, separators=(",", ":"), default=str))
            n += 1
        for day, lines in by_day.items():
            data = ("\n".join(lines) + "\n").encode()
            if isinstance(self.store, LocalStore):
                self._append_local(day, data)
            else:
                self._chunk += 1
                self.store.put(f"{RECORDS}{day}/{self.writer}-{self._chunk:06d}.jsonl", data)
        return n

    def _append_local(self, day: str, data: bytes) -> None:
        fd = self._fds.get(day)
        if fd is None:
            for old in list(self._fds):  # the day has turned: yesterday's file is finished
                os.close(self._fds.pop(old))
            assert isinstance(self.store, LocalStore)
            path = self.store.path(f"{RECORDS}{day}/{self.writer}.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._fds[day] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def close(self) -> None:
        for day in list(self._fds):
            os.close(self._fds.pop(day))


@dataclass
class LogReadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<key>:<line>: why" for lines that are not records


def _days(since: datetime, until: datetime) -> Iterator[date]:
    d = since.date()
    while d <= until.date():
        yield d
        d += timedelta(days=1)


def read_records(
    store: ObjectStore | str, since: datetime, until: datetime | None = None, source: str | None = None
) -> LogReadResult:
    """Every record with ``since <= at < until`` (UTC), oldest first. A line a writer was killed while writing
    (no newline, not JSON) is skipped and named, never fatal."""
    st = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    until = until or datetime.now(timezone.utc) + timedelta(seconds=1)
    since, until = _utc(since), _utc(until)
    out = LogReadResult()
    for day in _days(since, until):
        for info in sorted(st.list(day_prefix(day)), key=lambda i: i.key):
            if not info.key.endswith(".jsonl"):
                continue
            for i, line in enumerate(st.get(info.key).decode("utf-8", "replace").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    at = _utc(datetime.fromisoformat(r["at"]))
                except (ValueError, KeyError, TypeError) as exc:
                    out.skipped.append(f"{info.key}:{i}: not a record ({type(exc).__name__})")
                    continue
                if since <= at < until and (source is None or r.get("source") == source):
                    out.records.append(r)
    out.records.sort(key=lambda r: r["at"])
    return out


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def answered_keys(records: Iterable[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The capture ids and image hashes the records answer: how a stored capture finds its answer."""
    ids, hashes = set(), set()
    for r in records:
        if r.get("capture_id"):
            ids.add(r["capture_id"])
        if r.get("image_sha256"):
            hashes.add(r["image_sha256"])
    return ids, hashes


def answer_for(records: Iterable[dict[str, Any]], capture_id: str, image_sha256: str = "") -> dict | None:
    """The latest record answering this capture (by id, else by image hash); None if the line never asked."""
    best = None
    for r in records:
        same_id = bool(capture_id) and r.get("capture_id") == capture_id
        if same_id or (image_sha256 and r.get("image_sha256") == image_sha256):
            if r.get("status") is not None and (best is None or r["at"] >= best["at"]):
                best = r
    return best
