"""Shared fixtures. Servers run on 127.0.0.1 with free ports and are stopped by PID even when tests fail."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # flows/, serving/, infra/ and tests/helpers are imported from the repo root
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _sys_path_restored():
    """Whatever a test puts on sys.path leaves with it. Prefect's entrypoint loader puts the flow's folder first
    and leaves it there: flows/packaging.py then shadowed the `packaging` distribution for every later test of
    that worker and the processes it spawned (Optuna failed to import in them)."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server for the whole session; yields the server (endpoint, keys)."""
    from infra import objectstore

    d = tmp_path_factory.mktemp("seaweedfs")
    server = objectstore.start(d, timeout=90)
    old = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        objectstore.stop(d)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket per test (so tests never see each other's objects)."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    client.create_bucket(Bucket=name)
    yield name
    # a bucket holds volume slots of the session's server until it is deleted (SeaweedFS deletes non-empty ones)
    try:
        client.delete_bucket(Bucket=name)
    except client.exceptions.NoSuchBucket:
        pass  # the test deleted it itself


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL (Debian's package, infra/postgres_env.sh) on 127.0.0.1 and a free port, in its own
    data directory, stopped by PID at the end; tests create their own databases on it."""
    import shutil
    import tempfile

    from infra import postgres

    # not under pytest's /tmp/pytest-of-root (mode 700): run as root, the server runs as user postgres
    d = Path(tempfile.mkdtemp(prefix="alloynet-pg-"))
    server = postgres.start(d, timeout=90)
    try:
        yield server
    finally:
        postgres.stop(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and immune to OpenMP spinning on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_bundle_factory(tmp_path_factory):
    """``make(seed)``: a profile_cnn trained one epoch by alloynet (64x64) and exported (parity-checked on its
    test split), made once per seed per session: the serving modules share them."""
    made = {}

    def make(seed: int = 0):
        if seed not in made:
            from alloynet.export import export_checkpoint
            from tests.helpers.serving import train_tiny_checkpoint

            root = tmp_path_factory.mktemp(f"trained-{seed}")
            made[seed] = export_checkpoint(
                train_tiny_checkpoint(root, seed=seed), root / "export", n_parity=6, log=lambda *_: None
            )
        return made[seed]

    return make
