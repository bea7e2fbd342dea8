"""The line's record: written off the request path, partitioned by day, read back, linked to stored captures."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from alloynet.captures.stores import LocalStore
from alloynet.monitor.record import Journal, answer_for, read_records
from serving.client.errors import InvalidCaptureError
from serving.client.facade import AlloyClient
from serving.client.prediction import Prediction


def _prediction(alloy: str = "Al6082") -> Prediction:
    return Prediction(
        alloy=alloy,
        confidence=0.8,
        probabilities={alloy: 0.8, "Al5083": 0.2},
        prediction_set=[alloy, "Al5083"],
        group="light",
        group_probability=0.99,
        thickness_mm=5.0,
        absorption={"a0": 1.0, "mu_eff": 2.0},
        flags=["thickness_out_of_range"],
        server="triton",
    )


class FakeBackend:
    server, model, target, version = "triton", "alloynet", "127.0.0.1:1", "3"

    def predict_batch(self, captures, calibrations=None, wedges_mm=None, errors="raise"):
        out = [
            _prediction() if not isinstance(c, bytes) or c != b"bad" else InvalidCaptureError("image: bad")
            for c in captures
        ]
        if errors == "raise" and any(isinstance(r, Exception) for r in out):
            exc = next(r for r in out if isinstance(r, Exception))
            exc.results = out
            raise exc
        return out

    def close(self) -> None:
        pass


def test_answers_are_recorded_with_identity_and_linked_by_hash(tmp_path):
    from serving.client.record import Recorder

    cap_dir = tmp_path / "line"
    cap_dir.mkdir()
    png = cap_dir / "cap-001.png"
    png.write_bytes(b"\x89PNG fake bytes")
    (cap_dir / "cap-001.json").write_text(json.dumps({"capture_id": "cap-001"}))
    arr = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    store = LocalStore(tmp_path / "store")
    client = AlloyClient(FakeBackend(), Recorder(store))
    client.predict(png)
    client.predict_batch([arr, b"bad"], errors="return")
    with pytest.raises(InvalidCaptureError):
        client.predict(b"bad")
    client.close()
    recs = read_records(store, datetime.now(timezone.utc) - timedelta(hours=1)).records
    assert len(recs) == 4
    first = recs[0]
    assert first["capture_id"] == "cap-001"
    assert first["image_sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
    assert first["alloy"] == "Al6082" and first["prediction_set"] == ["Al6082", "Al5083"]
    assert first["flags"] == ["thickness_out_of_range"] and first["model_version"] == "3"
    assert first["latency_ms"] >= 0
    assert {r["image_sha256"] for r in recs[1:]} >= {hashlib.sha256(arr.tobytes()).hexdigest()}
    refused = [r for r in recs if r["status"] == "refused"]
    assert len(refused) == 2 and all("image: bad" in r["error"] for r in refused)
    assert answer_for(recs, "other-id", first["image_sha256"])["capture_id"] == "cap-001"
    assert answer_for(recs, "nobody", "") is None


def test_journal_partitions_by_day_and_skips_a_torn_line(tmp_path):
    store = LocalStore(tmp_path)
    j = Journal(store, writer="w1")
    day1 = datetime(2026, 12, 1, 23, 59, tzinfo=timezone.utc)
    j.write(
        [
            {"at": day1.isoformat(), "capture_id": "a", "status": "ok"},
            {"at": (day1 + timedelta(minutes=2)).isoformat(), "capture_id": "b", "status": "ok"},
        ]
    )
    j.close()
    keys = sorted(i.key for i in store.list("line/records/"))
    assert keys == ["line/records/2026-12-01/w1.jsonl", "line/records/2026-12-02/w1.jsonl"]
    with open(store.path(keys[1]), "a") as f:
        f.write('{"at": "2026-12-02T00:05')  # a writer killed mid-line
    res = read_records(store, day1 - timedelta(hours=1), day1 + timedelta(days=1))
    assert [r["capture_id"] for r in res.records] == ["a", "b"]
    assert len(res.skipped) == 1 and "2026-12-02/w1.jsonl:2" in res.skipped[0]
    only_second = read_records(store, day1 + timedelta(minutes=1), day1 + timedelta(days=1)).records
    assert [r["capture_id"] for r in only_second] == ["b"]


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    from serving.client.record import Recorder

    class SlowJournal:
        def __init__(self):
            import threading

            self.gate = threading.Event()

        def write(self, records):
            self.gate.wait(5)
            return len(list(records))

        def close(self):
            pass

    rec = Recorder(LocalStore(tmp_path), max_queue=2)
    rec.journal = SlowJournal()
    for _ in range(20):
        rec.record([b"x"], [_prediction()], 0.0, 0.001)
    assert rec.dropped > 0
    rec.journal.gate.set()
    rec.close()


def test_a_server_that_dies_mid_request_leaves_a_record_of_the_failure(tmp_path):
    from serving.client.errors import ServingError
    from serving.client.record import Recorder

    class DeadBackend(FakeBackend):
        def predict_batch(self, captures, calibrations=None, wedges_mm=None, errors="raise"):
            raise ServingError("UNAVAILABLE: connection reset", code="UNAVAILABLE")

    store = LocalStore(tmp_path)
    client = AlloyClient(DeadBackend(), Recorder(store))
    with pytest.raises(ServingError):
        client.predict_batch([b"a", b"b"])
    client.close()
    recs = read_records(store, datetime.now(timezone.utc) - timedelta(hours=1)).records
    assert len(recs) == 2 and all(r["status"] == "refused" and "UNAVAILABLE" in r["error"] for r in recs)
