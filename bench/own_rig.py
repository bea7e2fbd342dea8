"""A lab's own rig, trained as a user would: `alloynet train --store DIR` with no config, on captures from a rig
the forward model does not describe (the test-built second rig: its own scatter, heel, PSF and gain-map code),
with and without the physics term's correction from the rig's own labelled captures (alloynet.physics.correction).

    OMP_NUM_THREADS=1 .venv/bin/python bench/own_rig.py --out /work/bench-out/own_rig [--seed 11]

The data set is bench/identification.py's `rig_b` (300 plates per alloy of any thickness 1-5 mm, one capture
each, 50 and 70 mm wedges, 64 px; 70/15/15 by plate; the same seed makes the same bytes), reused from
``<out>/rig_b-s<seed>/data`` when there. Each arm trains the default config (profile_mlp, 60 epochs, early
stopping) on the store alone (no simulated captures: a lab has no simulator of its rig) and is evaluated on the
test split against the ceiling of the rig that took the captures. Prints a JSON summary and writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from identification import data  # noqa: E402

from alloynet.evaluate import evaluate  # noqa: E402
from alloynet.physics.second_rig import SecondRigConfig  # noqa: E402
from alloynet.physics.simulator import RigConfig  # noqa: E402
from alloynet.train import TrainConfig, train  # noqa: E402

ARMS = {"corrected": True, "nominal": False}


def arm(out: Path, name: str, correction: bool, seed: int) -> dict:
    done = out / name / "run.json"
    if done.exists():  # a finished arm is reused (delete the folder to measure again)
        return json.loads(done.read_text())
    cfg = TrainConfig.model_validate(
        {
            "data": {"store": str(out / "data")},
            "out_dir": str(out / name),
            "seed": seed,
            "progress": False,
            "model": {"physics_correction": correction},
        }
    )
    t0 = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - t0
    rigs = {w: SecondRigConfig.from_nominal(RigConfig(height=64, width=64, wedge_mm=w)) for w in (50.0, 70.0)}
    m = evaluate(result.checkpoint, out / "data", None, out / name / "report", ceiling_rigs=rigs, gradcam=0)
    term = m.get("physics_term") or {}
    row = {
        "arm": name,
        "train_s": round(train_s),
        "best_epoch": result.best_epoch,
        **{
            k: m.get(k)
            for k in (
                "balanced_accuracy",
                "heavy_light_balanced_accuracy",
                "ceiling_accuracy",
                "ceiling_heavy_light",
                "ceiling_gap",
                "set_coverage",
                "set_size_mean",
                "ece",
                "n",
            )
        },
        "term": {k: term.get(k) for k in ("weight", "term_alone", "trunk_alone", "changed", "correction")},
        "baselines": {k: v.get("balanced_accuracy") for k, v in (m.get("baselines") or {}).items()},
    }
    done.write_text(json.dumps(row, indent=1, default=str))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-own-rig"))
    ap.add_argument("--seed", type=int, default=11, help="data set and training seed")
    ap.add_argument("--arms", default="corrected,nominal")
    a = ap.parse_args()
    out = a.out / f"rig_b-s{a.seed}"
    data(out, "rig_b", 300, 64, a.seed)
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "command": " ".join(sys.argv),
        "runs": [arm(out, name, ARMS[name], a.seed) for name in a.arms.split(",")],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
