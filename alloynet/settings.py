"""The one place the default locations come from: every command, flow and server reads them here.

``ALLOYNET_HOME`` (default ``demo-data`` in the current directory, where ``make demo`` writes) holds:

    <home>/rig        the simulated rig's upload store (``alloynet demo``)
    <home>/data       ingested captures and their manifest: the capture store training reads
    <home>/registry   the model store: versions, champion, audit log
    <home>/runs       per-run checkpoints, reports and packages

``ALLOYNET_REGISTRY`` overrides the registry alone (e.g. ``s3://models/registry``). Nothing here creates a
directory: commands that write create what they need; commands that read say where they looked.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ALLOYNET_HOME"
REGISTRY_ENV = "ALLOYNET_REGISTRY"
DEFAULT_HOME = "demo-data"

HELP = (
    f"Defaults: ${HOME_ENV} (else ./{DEFAULT_HOME}, where `make demo` writes) holds data/ (captures and "
    f"manifest), registry/ (models) and runs/ (checkpoints, reports); ${REGISTRY_ENV} overrides the "
    "registry alone."
)


def home() -> Path:
    """``$ALLOYNET_HOME``, else ``demo-data`` in the current directory."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else Path(DEFAULT_HOME)


def registry() -> str:
    """The model store: ``$ALLOYNET_REGISTRY``, else ``<home>/registry``."""
    return os.environ.get(REGISTRY_ENV, "").strip() or str(home() / "registry")


def data_dir() -> str:
    """Ingested captures and their manifest: ``<home>/data``."""
    return str(home() / "data")


def work_dir() -> str:
    """Per-run checkpoints, reports and packages: ``<home>/runs``."""
    return str(home() / "runs")


def rig_store() -> str:
    """Where the demo's simulated rig uploads captures: ``<home>/rig``."""
    return str(home() / "rig")
