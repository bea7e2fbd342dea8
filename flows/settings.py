"""Defaults shared by the flows (the deployments in prefect.yaml override them per environment).

The locations come from alloynet.settings (``$ALLOYNET_HOME``, ``$ALLOYNET_REGISTRY``), read when this module is
imported: a worker started with another ``ALLOYNET_HOME`` gets that home's data, registry and runs.
"""

from __future__ import annotations

from alloynet import settings
from alloynet.data.manifest import DataSet, manifest_path
from alloynet.steps import Candidate

SOURCE = "s3://captures/rig"  # where the rig uploads captures (the local stack's SeaweedFS bucket)
DATA_DIR = settings.data_dir()  # ingested captures + manifest, on the worker
REGISTRY = settings.registry()  # the model store (s3://models/registry in production)
WORK_DIR = settings.work_dir()  # per-run checkpoints, reports and packages
MIN_NEW_LABELLED = 50
SERVING_FORMATS = ["torchserve", "triton", "triton-gpu"]


def default_candidates() -> list[Candidate]:
    return [Candidate(name="profile-mlp", config="configs/demo.yaml")]


def current_dataset(data_dir: str) -> DataSet | None:
    """The data directory as it is now (a flow run on its own, not inside a nightly run); None if empty."""
    return DataSet.current(data_dir) if manifest_path(data_dir).exists() else None
