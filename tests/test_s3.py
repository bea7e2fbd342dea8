"""S3 store and ingest against a real S3-compatible server (SeaweedFS) on 127.0.0.1."""
import time

import pytest

from alloynet.captures.ingest import ingest
from alloynet.captures.layout import list_quarantine
from alloynet.captures.stores import LocalStore, ObjectExists, ObjectMissing, S3Store, open_store
from alloynet.data.manifest import build_manifest
from tests.helpers.dummy import DummyCaptureStore

pytestmark = pytest.mark.s3


def _upload(local: LocalStore, s3: S3Store, keys=None):
    for info in local.list("captures/"):
        if keys is None or info.key in keys:
            s3.put(info.key, local.get(info.key), overwrite=True)


def test_s3_store_roundtrip_and_no_overwrite(s3_server, s3_bucket):
    s = open_store(f"s3://{s3_bucket}/lab1?endpoint={s3_server.endpoint}")
    s.put("captures/x.json", b"{}")
    assert s.exists("captures/x.json") and not s.exists("captures/y.json")
    assert s.get("captures/x.json") == b"{}"
    with pytest.raises(ObjectExists):
        s.put("captures/x.json", b"[]")
    assert [o.key for o in s.list("captures/")] == ["captures/x.json"]
    s.delete("captures/x.json")
    with pytest.raises(ObjectMissing):
        s.get("captures/x.json")


def test_s3_ingest_incremental_with_corrupt_vanished_and_duplicate(s3_server, s3_bucket, tmp_path):
    s3 = S3Store(s3_bucket, "rig7", endpoint_url=s3_server.endpoint)
    dest = LocalStore(tmp_path / "data")
    with DummyCaptureStore(n_max=3, size=32, imbalance_ratio=3, seed=1) as (local, manifest):
        ids = list(manifest.capture_id)
        first_keys = {f"captures/{c}.{ext}" for c in ids[:4] for ext in ("json", "png")}
        _upload(local, s3, first_keys)
        r1 = ingest(s3, dest, accepted_sizes={(32, 32)})
        assert sorted(r1.new) == sorted(ids[:4])

        time.sleep(1.1)  # S3 timestamps have 1 s resolution: make "the next night" later than the first batch
        # the next night: the rest arrive, one is corrupt in transit, one vanishes between list and get,
        # one is a duplicate upload of an already-ingested capture
        _upload(local, s3, {o.key for o in local.list("captures/")} - first_keys)
        bad = ids[4]
        s3.put(f"captures/{bad}.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, overwrite=True)
        gone = ids[5]
        s3.put(f"captures/{ids[0]}.json", local.get(f"captures/{ids[0]}.json"), overwrite=True)

        class DeletingBetweenListAndGet(S3Store):
            def list(self, prefix=""):
                items = list(super().list(prefix))
                s3.delete(f"captures/{gone}.json")
                return iter(items)

        racing = DeletingBetweenListAndGet(s3_bucket, "rig7", endpoint_url=s3_server.endpoint)
        racing.uri = s3.uri  # same source, same watermark
        r2 = ingest(racing, dest, accepted_sizes={(32, 32)})
        assert r2.vanished == [f"captures/{gone}.json"]
        assert list(r2.quarantined) == [f"captures/{bad}.json"]
        assert r2.duplicates == [ids[0]]
        assert sorted(r2.new) == sorted(set(ids[4:]) - {bad, gone})
        q = list_quarantine(dest)
        assert len(q) == 1 and "corrupt or truncated PNG" in q[0]["reason"] and q[0]["source"].startswith("s3://")

        r3 = ingest(s3, dest, accepted_sizes={(32, 32)})  # nothing new since the watermark
        assert (r3.new, r3.quarantined, r3.duplicates) == ([], {}, [])
        df = build_manifest(dest)
        assert len(df) == len(ids) - 2 and df.groupby("plate_id").split.nunique().max() == 1
        # a downloaded image is byte-identical to the rig's (verified against the sidecar hash)
        assert dest.get(f"captures/{ids[1]}.png") == local.get(f"captures/{ids[1]}.png")


def test_s3_credentials_come_from_the_environment(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    s = S3Store(s3_bucket, endpoint_url=s3_server.endpoint)
    with pytest.raises(Exception, match="SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied"):
        list(s.list())
