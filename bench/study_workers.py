"""Wall time of a small CPU study: serial in-process, and on a work pool with 1 and with 2 process workers.

    .venv/bin/python bench/study_workers.py --out /tmp/alloynet-bench-workers

Starts its own Prefect server (SQLite) on a free port, the `local-process` pool, the `study-cell/one-cell-cpu`
deployment and the workers, and stops them all at the end. Every run starts from an empty cache (the data
sets are simulated once beforehand and copied in, so only the cells are timed), one thread per cell
(OMP_NUM_THREADS=1, the deployment's setting). The three runs' metrics must agree exactly; the script
checks it. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def study_config(out: Path, name: str, epochs: int) -> dict:
    return {
        "name": "bench",
        "out_dir": str(out / name / "out"),
        "work_dir": str(out / name / "work"),
        "architectures": ["profile_cnn", "fnn"],
        "losses": [{"name": "ce"}, {"name": "balanced_softmax"}],
        "imbalance_ratios": [1, 10],
        "seeds": [0],
        "data": {"n_max": 40, "test_plates_per_class": 6, "captures_per_plate": 2, "rig": {"height": 64, "width": 64}},
        "train": {"epochs": epochs, "data.batch_size": 32, "progress": False},
        "ceiling_plates": 50,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-workers"))
    ap.add_argument("--epochs", type=int, default=5)
    a = ap.parse_args()
    os.environ.update(
        {"PREFECT_HOME": str(a.out / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    )
    import pandas as pd
    import torch

    from alloynet.study import StudyConfig, run_study
    from alloynet.study.runner import prepare_data
    from flows.study import study
    from infra import stack

    shutil.rmtree(a.out, ignore_errors=True)
    seed_cfg = StudyConfig.model_validate(study_config(a.out, "data", a.epochs))
    t0 = time.perf_counter()
    prepare_data(seed_cfg)
    print(f"simulating the data sets (not timed below): {time.perf_counter() - t0:.0f} s", flush=True)

    def fresh(name: str) -> dict:
        cfg = study_config(a.out, name, a.epochs)
        shutil.copytree(Path(seed_cfg.work_dir) / "data", Path(cfg["work_dir"]) / "data")
        return cfg

    times, tables = {}, {}
    torch.set_num_threads(1)
    cfg = fresh("serial")
    t0 = time.perf_counter()
    tables["serial"] = run_study(StudyConfig.model_validate(cfg), log=lambda *_: None)
    times["serial, in-process (no Prefect)"] = time.perf_counter() - t0
    print(f"serial: {times['serial, in-process (no Prefect)']:.0f} s", flush=True)

    state = a.out / "stack"
    server = stack.start_server(state)
    api = f"{server.url}/api"
    workers: list[str] = []
    try:
        stack.ensure_work_pool(state, api)
        stack.deploy(state, api, ["study-cell/one-cell-cpu"])
        with stack.talking_to(api):
            for n in (1, 2):
                while len(workers) < n:
                    workers.append(f"w{len(workers) + 1}")
                    stack.start_worker(state, api, name=workers[-1])
                cfg = fresh(f"pool{n}")
                t0 = time.perf_counter()
                res = study(cfg, deployment="study-cell/one-cell-cpu", poll_s=1.0)
                key = f"work pool, {n} process worker{'s' if n > 1 else ''}"
                times[key] = time.perf_counter() - t0
                tables[key] = pd.read_csv(Path(cfg["out_dir"]) / "results.csv")
                spread = {}
                for r in res["runs"].values():
                    spread[r["workers"][-1]] = spread.get(r["workers"][-1], 0) + 1
                print(f"{key}: {times[key]:.0f} s, cells per worker {sorted(spread.values())}", flush=True)
    finally:
        for w in workers:
            stack.stop_service(state, w)
        stack.stop_service(state, "prefect-server")
    ref = tables["serial"].drop(columns=["train_s"]).reset_index(drop=True)
    for t in tables.values():
        pd.testing.assert_frame_equal(t.drop(columns=["train_s"]).reset_index(drop=True), ref)
    cells = len(StudyConfig.model_validate(cfg).cells())
    print(
        f"\n{cells} cells (profile_cnn, fnn x ce, balanced_softmax x rho 1, 10; 64x64, {a.epochs} epochs); "
        "metrics identical in every run"
    )
    print("| run | wall (s) | vs serial |\n|---|---|---|")
    base = times["serial, in-process (no Prefect)"]
    for k, v in times.items():
        print(f"| {k} | {v:.0f} | {base / v:.2f}x |")
    (a.out / "times.json").write_text(json.dumps(times, indent=1))


if __name__ == "__main__":
    main()
