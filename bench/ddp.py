"""DDP on CPU: one resnet18 epoch with torchrun on 2 processes (gloo) against 1 process.

    .venv/bin/python bench/ddp.py --out /tmp/alloynet-bench-ddp --n-max 60 --size 64 --repeats 2

Cases (each a fresh process, the same data set and recipe, ``alloynet train --epochs 1``):
1 process x 1 thread, 1 process x 2 threads, torchrun 2 processes x 1 thread (DDP, gloo all-reduce).
Reported: the epoch's training time from the trainer's history (``train_seconds``: forward, backward,
all-reduce, optimiser steps; rank 0's, which waits for rank 1 at every all-reduce), the training set's
images divided by it, and the command's wall time (Python, torch and data loading included).
Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def simulate(root: Path, n_max: int, size: int) -> Path:
    from alloynet.captures.stores import LocalStore
    from alloynet.data.manifest import build_manifest, manifest_path, write_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.physics.simulator import RigConfig

    if not manifest_path(root).exists():
        store = LocalStore(root)
        simulate_dataset(
            DatasetSpec(
                n_max=n_max,
                imbalance_ratio=1.0,
                imbalance="balanced",
                seed=0,
                captures_per_plate=2,
                rig=RigConfig(height=size, width=size),
            ),
            store,
        )
        write_manifest(build_manifest(store, seed=0), manifest_path(root))
    return root


def run(case: str, procs: int, threads: int, store: Path, out: Path, batch: int) -> dict:
    train = [
        "-m",
        "alloynet.cli",
        "train",
        "--store",
        str(store),
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        "progress=false",
        "--set",
        f"data.batch_size={batch}",
        "--set",
        "schedule.warmup_epochs=0",
    ]
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *train]
        if procs > 1
        else [sys.executable, *train]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{res.stderr[-3000:]}")
    h = json.loads((out / "history.json").read_text())[0]
    return {
        "case": case,
        "epoch_s": h["train_seconds"],
        "wall_s": wall,
        "val_balanced_accuracy": h["val_balanced_accuracy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-ddp"))
    ap.add_argument("--n-max", type=int, default=60)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="per process (DDP: global batch = 2x)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    from alloynet.data.manifest import manifest_path, read_manifest

    store = simulate(a.out / "data", a.n_max, a.size)
    n_train = int((read_manifest(manifest_path(store)).split == "train").sum())
    cases = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("torchrun 2 processes x 1 thread", 2, 1)]
    results: dict[str, list[dict]] = {c[0]: [] for c in cases}
    for r in range(a.repeats):  # interleaved, so a busy spell on the shared machine hits every case
        for name, procs, threads in cases:
            res = run(name, procs, threads, store, a.out / f"run-{procs}x{threads}-{r}", a.batch_size)
            results[name].append(res)
            print(json.dumps(res), flush=True)
    print(
        f"\nresnet18, {a.size}x{a.size}, {n_train} training captures, batch {a.batch_size} per process, "
        f"median of {a.repeats}"
    )
    print("| case | epoch (s), median [range] | images/s | wall incl. start-up (s) |\n|---|---|---|---|")
    base = statistics.median(x["epoch_s"] for x in results[cases[0][0]])
    for name, runs in results.items():
        e = statistics.median(x["epoch_s"] for x in runs)
        lo, hi = min(x["epoch_s"] for x in runs), max(x["epoch_s"] for x in runs)
        print(
            f"| {name} | {e:.1f} [{lo:.1f}-{hi:.1f}] ({base / e:.2f}x) | {n_train / e:.0f} | "
            f"{statistics.median(x['wall_s'] for x in runs):.1f} |"
        )


if __name__ == "__main__":
    main()
