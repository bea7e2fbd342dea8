"""`ingest`: pull new captures since the watermark, verify, quarantine bad ones, update the manifest."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.artifacts import ingest_artifacts, ingest_warnings
from flows.logs import route_library_logs
from flows.settings import DATA_DIR, SOURCE
from flows.tasks import ingest_task


@flow(name="ingest", description="Incremental, verified, idempotent capture ingest and manifest update.")
def ingest(
    source: str = SOURCE,
    data_dir: str = DATA_DIR,
    seed: int = 0,
    accepted_sizes: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The ingest report as a dict; ``dataset`` ({data_dir, manifest_hash}) is what later steps take.
    ``artifacts`` and ``flow_run_id`` let the nightly summary link here."""
    route_library_logs()
    report = asdict(ingest_task(source, data_dir, seed, accepted_sizes))
    for w in ingest_warnings(report):
        get_run_logger().warning(w)
    ids = ingest_artifacts(report)
    return {**report, "artifacts": {k: str(v) for k, v in ids.items()}, "flow_run_id": flow_run.get_id()}
