"""A store that cannot be used fails in one clear line: which store, which endpoint, what to fix."""

from __future__ import annotations

import pytest

from alloynet.captures.stores import S3Store, StoreUnavailable
from infra.processes import free_port


@pytest.mark.s3
def test_missing_bucket_names_bucket_and_endpoint(s3_server):
    store = S3Store("no-such-bucket", "rig", endpoint_url=s3_server.endpoint)
    with pytest.raises(StoreUnavailable) as err:
        list(store.list("captures/"))
    assert str(err.value) == (
        f"s3://no-such-bucket/rig/ (endpoint {s3_server.endpoint}): bucket 'no-such-bucket' "
        "does not exist; create it or fix the bucket in the URI"
    )
    assert not err.value.transient


@pytest.mark.s3
def test_refused_credentials(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreUnavailable, match=r"credentials refused \(SignatureDoesNotMatch\)"):
        S3Store(s3_bucket, endpoint_url=s3_server.endpoint).get("x")


def test_unreachable_endpoint_is_transient(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(StoreUnavailable, match="the object store does not answer") as err:
        list(S3Store("captures", "rig", client=client).list())
    assert err.value.transient and endpoint in str(err.value)
