"""Simulator-only training on the second rig: the nominal simulator against the simulator calibrated to it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rig_calibration.py --work /tmp/rigcal [--plates 40] [--epochs 30]

Steps (every one an `alloynet` command, so the figures are what a lab would get):
1. `rig references` on the second rig (64 px, Al1050 at 1/2/5 mm, 6 sessions, 6 captures per plate);
2. `rig calibrate` -> rig profile;
3. `simulate` twice for training (nominal; `--rig-profile`), balanced classes, plates of any thickness 1-5 mm,
   50 mm wedge, 64 px; and once on the second rig for the test set (another seed);
4. `train` profile_mlp (configs/profile_mlp.yaml) on each training store; `evaluate` both on every labelled
   capture of the second rig's store (all marked test: no second-rig capture is seen in training).
Prints the balanced accuracy of each and the difference (issue 9's target: calibrated >= uncalibrated + 0.15).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def run(*args: str) -> str:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "alloynet.cli", *args], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"alloynet {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    print(f"  alloynet {args[0]} {args[1] if len(args) > 1 else ''}: {time.perf_counter() - t0:.0f} s", flush=True)
    return res.stdout


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--plates", type=int, default=40, help="plates per class in each training set")
    p.add_argument("--test-plates", type=int, default=20, help="plates per class in the second rig's test set")
    p.add_argument("--epochs", type=int, default=30)
    a = p.parse_args()
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    print(f"{platform.machine()}, {os.cpu_count()} cores (shared), OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    run("rig", "references", str(w / "refs"), "--simulator", "second_rig", "--size", "64")
    print(run("rig", "calibrate", str(w / "refs"), "--out", str(w / "rig.yaml")))
    spec = {"imbalance_ratio": 1, "wedges_mm": [50], "captures_per_plate": 2, "test_fraction": 0.15}
    for name, n, seed, extra in (("nominal", a.plates, 1, {}), ("calibrated", a.plates, 1, {}),
                                 ("second", a.test_plates, 2, {"simulator": "second_rig"})):
        cfg = w / f"{name}.yaml"
        cfg.write_text(json.dumps({**spec, **extra, "n_max": n, "seed": seed}))
        args = ["simulate", "--out", str(w / name), "--config", str(cfg), "--size", "64"]
        run(*args, *(["--rig-profile", str(w / "rig.yaml")] if name == "calibrated" else []))
    import pandas as pd

    # every second-rig capture is a test capture: no model sees the second rig in training
    df = pd.read_csv(w / "second" / "manifest.csv")
    df.loc[df.labelled.astype(str).str.lower().isin(["true", "1"]), "split"] = "test"
    df.to_csv(w / "second" / "manifest-all-test.csv", index=False)
    scores = {}
    for name in ("nominal", "calibrated"):
        run("train", "--config", "configs/profile_mlp.yaml", "--store", str(w / name), "--out", str(w / f"run-{name}"),
            "--set", f"epochs={a.epochs}", "--device", "cpu")
        out = w / f"eval-{name}"
        run("evaluate", str(w / f"run-{name}" / "best.pt"), "--store", str(w / "second"), "--manifest",
            str(w / "second" / "manifest-all-test.csv"), "--split", "test", "--out", str(out), "--no-ceiling",
            "--gradcam", "0")
        m = json.loads((out / "metrics.json").read_text())
        scores[name] = m["balanced_accuracy"]
        print(f"simulator-only {name}: balanced accuracy {m['balanced_accuracy']:.3f} on {m['n']} second-rig captures",
              flush=True)
    gain = scores["calibrated"] - scores["nominal"]
    print(f"calibrated - uncalibrated: {gain:+.3f} (target +0.15: {'met' if gain >= 0.15 else 'missed'})")


if __name__ == "__main__":
    main()
