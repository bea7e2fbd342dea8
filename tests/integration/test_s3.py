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


def test_s3_create_if_absent_has_one_winner(s3_server, s3_bucket):
    """Racing writers of one key: exactly one put succeeds (If-None-Match), the others get ObjectExists."""
    import threading

    s = S3Store(s3_bucket, endpoint_url=s3_server.endpoint)
    results = []
    barrier = threading.Barrier(6)

    def writer(i):
        barrier.wait()
        try:
            s.put("captures/raced.json", f"{i}".encode())
            results.append(("won", i))
        except ObjectExists:
            results.append(("lost", i))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for what, i in results if what == "won"]
    assert len(results) == 6 and len(winners) == 1
    assert s.get("captures/raced.json") == str(winners[0]).encode()


def test_s3_writer_lease(s3_server, s3_bucket):
    from alloynet.captures.stores import LEASE_KEY, WriterBusy, writer_lock

    s = S3Store(s3_bucket, "data", endpoint_url=s3_server.endpoint)
    with writer_lock(s, "ingest"):
        with pytest.raises(WriterBusy, match="holds its writer lease"):
            with writer_lock(s, "ingest"):
                pass
    assert not s.exists(LEASE_KEY)
    # a lease whose holder died (expired) is taken over
    s.put(LEASE_KEY, b'{"pid": 1, "expires": 0}')
    with writer_lock(s, "ingest"):
        assert s.exists(LEASE_KEY)
    assert not s.exists(LEASE_KEY)


def test_bucket_probe_accepts_bucket_already_exists():
    """SeaweedFS answers BucketAlreadyExists (not ...OwnedByYou) for its own bucket after a restart."""
    from botocore.exceptions import ClientError

    from infra.objectstore import ensure_bucket

    class Client:
        def __init__(self, code, visible):
            self.code, self.visible, self.created = code, visible, 0

        def head_bucket(self, Bucket):
            if not self.visible:
                raise ClientError({"Error": {"Code": "404"}}, "HeadBucket")
            return {}

        def create_bucket(self, Bucket):
            self.created += 1
            self.visible = True
            raise ClientError({"Error": {"Code": self.code}}, "CreateBucket")

    existing = Client("BucketAlreadyExists", visible=True)
    ensure_bucket(existing, "captures")
    assert existing.created == 0  # HeadBucket said it is there: CreateBucket is not even asked
    raced = Client("BucketAlreadyExists", visible=False)  # created by someone else in between
    ensure_bucket(raced, "captures")
    assert raced.created == 1


def test_objectstore_restarts_on_existing_data(tmp_path):
    """Stop (cleanly, then by SIGKILL) and start again on the same directory: buckets and objects survive."""
    import os
    import signal

    import boto3

    from infra import objectstore
    from infra.processes import alive

    d = tmp_path / "s3"
    srv = objectstore.start(d, buckets=("captures", "models"), timeout=90)
    try:
        port = int(srv.endpoint.rsplit(":", 1)[1])
        client = lambda s: boto3.client(
            "s3",
            endpoint_url=s.endpoint,
            aws_access_key_id=s.access_key,  # noqa: E731
            aws_secret_access_key=s.secret_key,
            region_name="us-east-1",
        )
        client(srv).put_object(Bucket="captures", Key="a.json", Body=b"kept")
        with pytest.raises(RuntimeError, match="already runs on"):
            objectstore.start(d, buckets=("captures",), timeout=5)
        objectstore.stop(d)
        srv = objectstore.start(d, port, buckets=("captures", "models"), timeout=60)
        assert client(srv).get_object(Bucket="captures", Key="a.json")["Body"].read() == b"kept"
        os.killpg(srv.pid, signal.SIGKILL)
        while alive(srv.pid):
            time.sleep(0.05)
        srv = objectstore.start(d, port, buckets=("captures", "models"), timeout=60)
        c = client(srv)
        assert c.get_object(Bucket="captures", Key="a.json")["Body"].read() == b"kept"
        assert {b["Name"] for b in c.list_buckets()["Buckets"]} >= {"captures", "models"}
    finally:
        objectstore.stop(d)
