"""Identification that holds on the line: the issue-15 targets, measured (64 px, CPU).

    OMP_NUM_THREADS=1 .venv/bin/python bench/identification.py --part own      # plates of any thickness + robustness
    OMP_NUM_THREADS=1 .venv/bin/python bench/identification.py --part grid     # plates of 1, 2 or 5 mm
    OMP_NUM_THREADS=1 .venv/bin/python bench/identification.py --part rig_b    # the second rig, trained on its own data
    OMP_NUM_THREADS=1 .venv/bin/python bench/identification.py --part resnet   # resnet18 (wedge-aware) vs profile_mlp
                                            # (on a CPU resnet18 gets 5,000 simulated captures and 20 epochs; on a
                                            # GPU the same budget as profile_mlp)
    OMP_NUM_THREADS=1 .venv/bin/python bench/identification.py --part own_wedges  # own, synthetic wedges 45-75 mm
    OMP_NUM_THREADS=1 .venv/bin/python bench/identification.py --part open_beam   # own, rig with an open-beam strip

Each part simulates a balanced data set (seeded; 300 plates per alloy, one capture each: 70/15/15 splits),
trains the recommended model (configs/profile_mlp.yaml) with simulated captures from the same rig mixed in
(``data.synthetic``), evaluates it on the held-out test split beside the ideal-observer ceiling and the two
baselines, and writes ``<out>/<part>/summary.json``. ``own`` also runs the robustness suite. Parts are
independent: run them in parallel on different cores.
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

import torch  # noqa: E402

from alloynet.captures.stores import LocalStore  # noqa: E402
from alloynet.data.manifest import build_manifest, manifest_path, write_manifest  # noqa: E402
from alloynet.data.simulate import DatasetSpec, simulate_dataset  # noqa: E402
from alloynet.evaluate import evaluate  # noqa: E402
from alloynet.evaluate.robustness import run_suite  # noqa: E402
from alloynet.physics.second_rig import SecondRigConfig  # noqa: E402
from alloynet.physics.simulator import RigConfig  # noqa: E402
from alloynet.train import load_config, train  # noqa: E402

PARTS = {
    "own": {"spec": {}, "synthetic": {}},
    "grid": {"spec": {"thicknesses_mm": [1.0, 2.0, 5.0]}, "synthetic": {"thicknesses_mm": [1.0, 2.0, 5.0]}},
    "rig_b": {"spec": {"simulator": "second_rig"}, "synthetic": {"simulator": "second_rig"}},
    "resnet": {"spec": {}, "synthetic": {}},
    # as own, but the simulated captures mixed in come with wedges of 45-75 mm (60 mm left out): the model
    # learns how the nominal wedge-alone reference misses the rig as a function of wedge size
    "own_wedges": {"spec": {}, "synthetic": {"wedges_mm": [45.0, 50.0, 55.0, 65.0, 70.0, 75.0]}},
    # as own, on a rig that images a 6-row open-beam strip beside the plate (recorded in the sidecars; the
    # simulated captures mixed in have it too): in-session drift is corrected and flagged from it
    "open_beam": {"spec": {"rig": {"height": 64, "width": 64, "open_beam_rows": 6}}, "synthetic": {}},
}
# the robustness cases each part runs (own also runs every case)
SUITES = {"own": None, "own_wedges": None, "open_beam": ["any_thickness", "drift_3pct", "drift_in_session_3pct"]}


def data(out: Path, part: str, plates: int, size: int, seed: int) -> LocalStore:
    store = LocalStore(out / "data")
    if not manifest_path(out / "data").exists():
        spec = DatasetSpec.model_validate(
            {
                "n_max": plates,
                "imbalance_ratio": 1.0,
                "imbalance": "balanced",
                "captures_per_plate": 1,
                "seed": seed,
                "id_prefix": part.replace("_", "-"),
                "rig": RigConfig(height=size, width=size).model_dump(),
                **PARTS[part]["spec"],
            }
        )
        simulate_dataset(spec, store)
        write_manifest(build_manifest(store, seed=seed), manifest_path(out / "data"))
    return store


def run(model: str, out: Path, part: str, synthetic: int, epochs: int, seed: int, extra: dict | None = None) -> dict:
    over = {
        "data.store": str(out / "data"),
        "data.manifest": str(manifest_path(out / "data")),
        "out_dir": str(out / model),
        "seed": seed,
        "epochs": epochs,
        "progress": False,
        "data.synthetic": {"captures": synthetic, **PARTS[part]["synthetic"]},
    }
    if model != "profile_mlp":
        over.update(
            {
                "model.name": model,
                "model.kwargs": {},
                "model.activation": None,
                "optim.name": None,
                "optim.lr": None,
                "optim.weight_decay": None,
                "data.batch_size": 64,
            }
        )
    over.update(extra or {})
    done = out / model / "run.json"
    if done.exists():  # a finished run is reused (delete <out>/<part>/<model> to measure again)
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    result = train(load_config(ROOT / "configs" / "profile_mlp.yaml", over), resume=True)  # a killed run goes on
    train_s = time.perf_counter() - t0
    rigs = None
    if part == "rig_b":  # the ceiling and the physics fit of the rig that took the captures
        rigs = {w: SecondRigConfig.from_nominal(RigConfig(height=64, width=64, wedge_mm=w)) for w in (50.0, 70.0)}
    m = evaluate(result.checkpoint, out / "data", None, out / model / "report", ceiling_rigs=rigs, gradcam=2)
    keep = (
        "balanced_accuracy",
        "heavy_light_balanced_accuracy",
        "ceiling_accuracy",
        "ceiling_heavy_light",
        "ceiling_gap",
        "set_coverage",
        "set_size_mean",
        "coverage_target",
        "ece",
        "ece_uncalibrated",
        "n",
    )
    row = {
        "model": model,
        "train_s": round(train_s),
        "best_epoch": result.best_epoch,
        **{k: m.get(k) for k in keep},
        "baselines": m.get("baselines"),
        "checkpoint": str(result.checkpoint),
    }
    done.write_text(json.dumps(row, indent=1, default=str))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=list(PARTS), required=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-identification"))
    ap.add_argument("--plates", type=int, default=300, help="plates per alloy (one capture each)")
    ap.add_argument("--synthetic", type=int, default=20000, help="simulated training captures mixed in")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--models", default=None, help="comma-separated (default: profile_mlp; resnet: both)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a training config override, e.g. --set model.physics=false (repeatable)",
    )
    ap.add_argument("--no-suite", action="store_true", help="skip the robustness suite")
    a = ap.parse_args()
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.set)}
    out = a.out / a.part
    data(out, a.part, a.plates, 64, a.seed)
    summary = {
        "part": a.part,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "command": " ".join(sys.argv),
        "runs": [],
    }
    models = a.models.split(",") if a.models else ["profile_mlp", "resnet18"] if a.part == "resnet" else ["profile_mlp"]
    gpu = torch.cuda.is_available()
    summary["device"] = torch.cuda.get_device_name(0) if gpu else "cpu"
    for model in models:
        small = model != "profile_mlp" and not gpu  # a 2-D trunk on a CPU: a smaller budget
        summary["runs"].append(
            run(
                model,
                out,
                a.part,
                min(a.synthetic, 5000) if small else a.synthetic,
                20 if small else a.epochs,
                a.seed,
                extra,
            )
        )
        print(json.dumps(summary["runs"][-1], indent=1, default=str), flush=True)
    summary["overrides"] = extra
    if a.part in SUITES and not a.no_suite:
        summary["robustness"] = run_suite(
            summary["runs"][0]["checkpoint"], out / "robustness", plates_per_class=60, cases=SUITES[a.part], log=print
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
