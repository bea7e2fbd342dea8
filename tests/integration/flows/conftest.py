"""Fixtures for the Prefect flow tests: one test harness per session, an isolated PREFECT_HOME, a tiny rig.

The environment is set at import, before anything imports Prefect: telemetry off, and a throwaway
PREFECT_HOME and result storage path, so results never leak between sessions as cache hits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="alloynet-prefect-test-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_HOME),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(_HOME / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }
)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_PROFILE", None)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server (SQLite) for the whole session (~12 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_rig(tmp_path_factory):
    """What the rig uploaded: a seeded, long-tailed capture store of 32x32 captures (five alloys)."""
    from tests.helpers.dummy import DummyCaptureStore

    root = tmp_path_factory.mktemp("rig")
    with DummyCaptureStore(n_max=4, size=32, imbalance_ratio=2, seed=3, root=root) as (store, manifest):
        pass
    (root / "manifest.csv").unlink()  # the rig uploads captures, not manifests
    return root
