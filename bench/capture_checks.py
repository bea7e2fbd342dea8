"""What the capture checks inside the exported graph cost: in-process ONNX Runtime on one capture, the graph
with its checks against the same graph with the checks cut out, interleaved, one intra-op thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/capture_checks.py [--rounds 40] [--calls 50] [--size 64]

Prints p50 latency of each and the difference (the checks' cost per capture), per batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from alloynet.data.transforms import Preprocess  # noqa: E402
from alloynet.export import ExportMeta, export_onnx, onnx_session  # noqa: E402
from alloynet.export import graph as graph_module  # noqa: E402
from alloynet.models import create_model  # noqa: E402


def _no_checks(image, calibration, wedge_mm, max_adu):
    zeros = torch.zeros(image.shape[0], dtype=image.dtype)
    return zeros, zeros


def export_pair(size: int, tmp: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = create_model(
        "profile_cnn", num_classes=5, in_channels=1, preprocess=Preprocess([1000.0], [50000.0], mean=2.0, std=1.5)
    ).eval()
    meta = ExportMeta(
        class_names=["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"], channels=1, height=size, width=size
    )
    with_checks = export_onnx(model, meta, tmp / "checks.onnx")
    real = graph_module.capture_status
    graph_module.capture_status = _no_checks
    try:
        without = export_onnx(model, meta, tmp / "no_checks.onnx")
    finally:
        graph_module.capture_status = real
    return with_checks, without


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_pair(args.size, Path(tmp))
        sessions = [onnx_session(p, threads=1) for p in paths]
        print(
            f"# {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; "
            f"profile_cnn {args.size}x{args.size}, {args.rounds} rounds x {args.calls} calls each"
        )
        print("| batch | with checks p50 ms | without p50 ms | checks' cost p50 ms |")
        print("|---|---|---|---|")
        for batch in (1, 8):
            feed = {
                "image": rng.uniform(2000, 40000, (batch, 1, args.size, args.size)).astype(np.float32),
                "calibration": np.tile(np.array([[[1000.0, 50000.0]]], np.float32), (batch, 1, 1)),
                "wedge_mm": np.full((batch, 1), 50.0, np.float32),
            }
            times: list[list[float]] = [[], []]
            for _ in range(args.rounds):
                for k, sess in enumerate(sessions):
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        sess.run(None, feed)
                        times[k].append((time.perf_counter() - t0) * 1e3)
            a, b = statistics.median(times[0]), statistics.median(times[1])
            print(f"| {batch} | {a:.3f} | {b:.3f} | {a - b:.3f} |")
        print(f"# load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
