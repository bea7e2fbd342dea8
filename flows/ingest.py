"""`ingest`: pull new captures since the watermark, verify, quarantine bad ones, update the manifest."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from prefect import flow

from flows.artifacts import ingest_artifacts
from flows.settings import DATA_DIR, SOURCE
from flows.tasks import ingest_task


@flow(name="ingest", description="Incremental, verified, idempotent capture ingest and manifest update.")
def ingest(source: str = SOURCE, data_dir: str = DATA_DIR, seed: int = 0,
           accepted_sizes: Optional[list[tuple[int, int]]] = None) -> dict[str, Any]:
    """The ingest report as a dict; ``dataset`` ({data_dir, manifest_hash}) is what later steps take."""
    report = asdict(ingest_task(source, data_dir, seed, accepted_sizes))
    ingest_artifacts(report)
    return report
