"""Serving latency and throughput: in-process PyTorch and ONNX Runtime vs TorchServe and Triton over gRPC.

    .venv/bin/python bench/serve.py [--checkpoint best.pt] [--n 300] [--concurrency 8]

Same model (a profile_cnn trained one epoch by alloynet at 64x64 unless --checkpoint is given) and the
same captures everywhere; one intra-op thread per model instance. "batch 1": one request at a time,
sequential. "dynamic": --concurrency client threads sending single captures (servers batch them; the
in-process rows run batches of that size). Prints p50/p99 latency, throughput and ratios to in-process
ONNX Runtime. Needs infra/serving_env.sh for Triton.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def measure(fn, items, concurrency: int = 1, warmup: int = 10) -> dict:
    """Latency per call (ms) and throughput (captures/s) of fn(item) over items."""
    for it in items[:warmup]:
        fn(it)
    lat: list[float] = []
    lock = threading.Lock()
    chunks = [items[i::concurrency] for i in range(concurrency)]

    def worker(chunk):
        mine = []
        for it in chunk:
            t0 = time.perf_counter()
            fn(it)
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    n_caps = sum(len(it) if isinstance(it, np.ndarray) and it.ndim == 4 else 1 for it in items)
    return {"p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "throughput": n_caps / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from alloynet.export import export_checkpoint, onnx_session
    from alloynet.models.checkpoint import load_model
    from serving.client import connect
    from infra import torchserve as ts_server
    from serving.torchserve.archive import build_mar
    from infra import triton as tr_server
    from serving.triton.repository import BatchingOptions, build_repository
    from tests.helpers.serving import capture_images, train_tiny_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="alloynet-bench-"))
    ckpt = args.checkpoint or train_tiny_checkpoint(tmp)
    bundle = export_checkpoint(ckpt, tmp / "export", log=lambda *_: None)
    model, _ = load_model(ckpt)
    caps = capture_images(64, seed=11)
    f32 = caps.astype(np.float32)
    singles = [f32[i % len(f32)][None] for i in range(args.n)]
    c = args.concurrency
    batches = [np.concatenate([singles[(i + j) % args.n] for j in range(c)]) for i in range(0, args.n, c)]
    rows: dict[str, dict] = {}

    with torch.inference_mode():
        rows["PyTorch in-process (eager)"] = {"b1": measure(lambda x: model(torch.from_numpy(x)), singles),
                                              "dyn": measure(lambda x: model(torch.from_numpy(x)), batches)}
    sess = onnx_session(bundle.path("onnx"), threads=1)
    run = lambda x: sess.run(None, {"image": x})  # noqa: E731
    rows["ONNX Runtime in-process"] = {"b1": measure(run, singles), "dyn": measure(run, batches)}

    store = tmp / "store"
    build_mar(bundle.directory, store, batch_size=c, max_batch_delay_ms=2, threads=1)
    ts = ts_server.start(store, ["alloynet.mar"], tmp / "ts", timeout=180)
    try:
        with connect(f"torchserve://{ts.grpc_target}", token=ts.inference_key) as cl:
            rows["TorchServe gRPC"] = {"b1": measure(lambda x: cl.predict(x[0]), singles),
                                       "dyn": measure(lambda x: cl.predict(x[0]), singles, concurrency=c)}
    finally:
        ts_server.stop(tmp / "ts")

    ok, reason = tr_server.available()
    if ok:
        repo = build_repository(bundle.directory, tmp / "repo", opts=BatchingOptions(max_batch_size=32,
                                                                                     max_queue_delay_us=500))
        tr = tr_server.start(repo, tmp / "triton", models=["alloynet"])
        try:
            with connect(f"triton://{tr.grpc_target}/alloynet") as cl:
                cl.predict(f32[0])  # fetch class names once
                rows["Triton gRPC (Python backend, ORT)"] = {
                    "b1": measure(lambda x: cl.backend.infer_array(x), singles),
                    "dyn": measure(lambda x: cl.backend.infer_array(x), singles, concurrency=c)}
        finally:
            tr_server.stop(tmp / "triton")
    else:
        print(f"Triton skipped: {reason}")

    ref = rows["ONNX Runtime in-process"]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"n={args.n}, concurrency={c}, 64x64 captures, {bundle.meta.arch}")
    print("| path | b1 p50 ms | b1 p99 ms | b1 cap/s | dyn p50 ms | dyn p99 ms | dyn cap/s | b1 p50 / ORT | "
          "dyn cap/s / ORT |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        b, d = r["b1"], r["dyn"]
        print(f"| {name} | {b['p50']:.2f} | {b['p99']:.2f} | {b['throughput']:.0f} | {d['p50']:.2f} | "
              f"{d['p99']:.2f} | {d['throughput']:.0f} | {b['p50'] / ref['b1']['p50']:.1f}x | "
              f"{d['throughput'] / ref['dyn']['throughput']:.2f}x |")
    if "Triton gRPC (Python backend, ORT)" in rows:
        over = rows["Triton gRPC (Python backend, ORT)"]["b1"]["p50"] - ref["b1"]["p50"]
        print(f"\nTriton serving overhead at p50, batch 1: {over:.2f} ms over in-process ONNX Runtime "
              f"(goal <= 2 ms: {'met' if over <= 2 else 'not met'})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
