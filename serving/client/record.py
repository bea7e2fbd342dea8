"""The line's record, written from the client: every answer (and refusal) the line is given, kept off the
request path.

``predict`` hands the recorder its captures, results and timing (a tuple into a bounded queue: no hashing,
no I/O, no JSON); a background thread turns them into records (capture id, image sha256, the answer) and
appends them to the store's day partition (``alloynet.monitor.record.Journal``). The queue is drained before
every write, so records reach the store within one write of arriving; ``close`` (and interpreter exit) flushes
what is left. A full queue drops the record and counts it (``dropped``): serving never waits for the record.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from alloynet.contract import ANSWER_FIELDS

RECORD_VAR = "ALLOYNET_LINE_RECORD"  # a store URI: record every answer this client gets there
log = logging.getLogger(__name__)
_STOP = object()


def _identity(capture: Any) -> tuple[str, str]:
    """(capture id, image sha256) of a capture as the line sent it. A file's id is its sidecar's capture_id
    (else the file's stem, as alloynet names captures); its hash is the file's, the one the stored sidecar
    keeps, so an uploaded capture finds its answer. Bytes hash as they are; an array by its raw buffer."""
    if isinstance(capture, (str, Path)):
        p = Path(capture)
        cid = p.stem
        try:
            sidecar = p.with_suffix(".json")
            if sidecar.is_file():
                cid = str(json.loads(sidecar.read_text()).get("capture_id") or cid)
        except (OSError, ValueError, AttributeError):
            pass
        try:
            return cid, hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            return cid, ""
    if isinstance(capture, np.ndarray):
        return "", hashlib.sha256(np.ascontiguousarray(capture).tobytes()).hexdigest()
    return "", hashlib.sha256(bytes(capture)).hexdigest()


def _record(
    at: str, capture: Any, result: Any, latency_ms: float, batch: int, server: str, model: str, version: str
) -> dict:
    cid, sha = _identity(capture)
    r: dict[str, Any] = {
        "v": 1,
        "at": at,
        "source": "line",
        "capture_id": cid,
        "image_sha256": sha,
        "server": server,
        "model": model,
        "model_version": version,
        "latency_ms": round(latency_ms, 4),
        "batch": batch,
    }
    if isinstance(result, BaseException):
        r.update(status="refused", error=f"{type(result).__name__}: {result}"[:500])
        return r
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    for k in ANSWER_FIELDS:
        r[k] = d.get(k)
    return r


class Recorder:
    """Records a client's answers to ``store`` (a URI or an ObjectStore) from a background thread."""

    def __init__(self, store: Any, max_queue: int = 10000):
        from alloynet.monitor.record import Journal

        self.journal = Journal(store)
        self.dropped = 0
        self.written = 0
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="alloynet-line-record", daemon=True)
        self._closed = False
        self._thread.start()
        atexit.register(self.close)

    def record(
        self,
        captures: Sequence[Any],
        results: Sequence[Any],
        started: float,
        latency_s: float,
        server: str = "",
        model: str = "",
        version: str = "",
    ) -> None:
        """Hand one request's answers over; never blocks and never raises."""
        try:
            self._q.put_nowait((started, captures, results, latency_s, server, model, version))
        except queue.Full:
            self.dropped += len(captures)

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._q.get()]
            while True:  # everything already waiting goes out in one write
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            records = []
            for it in items:
                if it is _STOP:
                    stop = True
                    continue
                started, captures, results, latency_s, server, model, version = it
                at = datetime.fromtimestamp(started, timezone.utc).isoformat()
                ms = 1000.0 * latency_s / max(1, len(captures))
                for c, res in zip(captures, results):
                    try:
                        records.append(_record(at, c, res, ms, len(captures), server, model, version))
                    except Exception as exc:  # one odd capture never stops the record of the others
                        log.warning("line record: capture not recorded (%s)", exc)
            if records:
                try:
                    self.written += self.journal.write(records)
                except Exception as exc:
                    self.dropped += len(records)
                    log.error("line record: %d record(s) lost, the store refused them (%s)", len(records), exc)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout_s)
        self.journal.close()
        try:
            atexit.unregister(self.close)
        except Exception:
            pass


def clock() -> float:
    """The wall-clock time a request started (what its record's ``at`` says)."""
    return time.time()
