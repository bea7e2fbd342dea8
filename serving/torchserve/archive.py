"""Build a TorchServe .mar from an export bundle with torch-model-archiver.

The archive holds the TorchScript graph, the handler, ``export.json`` (class names, input shape, hashes),
the shared input checks and a per-model config (batching, workers, timeouts).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from alloynet import contract
from alloynet.export import ExportBundle
from serving.binaries import find_binary

HERE = Path(__file__).resolve().parent
HANDLER = HERE / "handler.py"
CHECKS = HERE.parent / "capture_checks.py"
CONTRACT = Path(contract.__file__)
CONTRACT_FILE = "alloynet_contract.py"  # the name the handler imports inside the archive


def archiver_command() -> list[str]:
    return [find_binary("torch-model-archiver", "pip install 'alloynet[serve]'")]


def model_config(
    batch_size: int = 8, max_batch_delay_ms: int = 5, workers: int = 1, response_timeout_s: int = 30, threads: int = 1
) -> dict:
    return {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": batch_size,
        "maxBatchDelay": max_batch_delay_ms,
        "responseTimeout": response_timeout_s,
        "handler": {"threads": threads},
    }


def build_mar(
    bundle_dir: str | Path,
    out_dir: str | Path,
    model_name: str = "alloynet",
    version: str = "1.0",
    batch_size: int = 8,
    max_batch_delay_ms: int = 5,
    workers: int = 1,
    response_timeout_s: int = 30,
    threads: int = 1,
) -> Path:
    """Write ``out_dir/<model_name>.mar`` (overwriting) and return its path."""
    bundle = ExportBundle.load(bundle_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "model-config.yaml"
        cfg.write_text(
            yaml.safe_dump(model_config(batch_size, max_batch_delay_ms, workers, response_timeout_s, threads))
        )
        shutil.copy2(CONTRACT, Path(tmp) / CONTRACT_FILE)
        extra = [bundle.directory / contract.META_FILE, CHECKS, Path(tmp) / CONTRACT_FILE]
        cmd = archiver_command() + [
            "--model-name",
            model_name,
            "--version",
            version,
            "--serialized-file",
            str(bundle.path("torchscript")),
            "--handler",
            str(HANDLER),
            "--extra-files",
            ",".join(str(p) for p in extra),
            "--config-file",
            str(cfg),
            "--export-path",
            str(out),
            "--force",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return out / f"{model_name}.mar"
