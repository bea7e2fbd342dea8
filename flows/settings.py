"""Defaults shared by the flows (the deployments in prefect.yaml override them per environment)."""
from __future__ import annotations

from alloynet.registry.pipeline import Candidate

SOURCE = "s3://captures/rig"          # where the rig uploads captures (the local stack's SeaweedFS bucket)
DATA_DIR = ".alloynet/data"           # ingested captures + manifest, on the worker
REGISTRY = ".alloynet/registry"       # the model store (s3://models/registry in production)
WORK_DIR = ".alloynet/runs"           # per-run checkpoints, reports and packages
MIN_NEW_LABELLED = 50
SERVING_FORMATS = ["torchserve", "triton"]


def default_candidates() -> list[Candidate]:
    return [Candidate(name="profile-cnn", config="configs/demo.yaml")]
