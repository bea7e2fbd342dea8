"""Conformal coverage: re-fit a finished run's honest answers (temperature, conformal threshold) under the
current code and measure what its prediction sets cover, on the test split and on fresh plates of the
robustness suite's in-distribution case.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recalibrate.py --runs /work/bench-out/phys --parts own,grid,rig_b \
        --out /tmp/alloynet-bench-recalibrate

``--runs`` is a bench/identification.py output (``<runs>/<part>/profile_mlp/{best.pt,config.yaml}``). The
weights are the run's; only the answers are fitted again (``alloynet.train.trainer.fit_answer``), once with
the calibration split alone (``answer.simulated: 0``, what earlier stops did) and once with held-out simulated
captures joining it (the default). Writes ``<out>/recalibrate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alloynet.evaluate import evaluate  # noqa: E402
from alloynet.evaluate.robustness import run_suite  # noqa: E402
from alloynet.train import load_config  # noqa: E402
from alloynet.train.trainer import fit_answer, setup  # noqa: E402


def refit(src: Path, dst: Path, simulated: int) -> dict:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "best.pt", dst / "best.pt")
    cfg = load_config(src / "config.yaml", {"out_dir": str(dst), "answer.simulated": simulated})
    return fit_answer(setup(cfg), dst / "best.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--parts", default="own,grid,rig_b")
    ap.add_argument("--model", default="profile_mlp")
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-recalibrate"))
    ap.add_argument("--plates", type=int, default=60, help="fresh plates per alloy for the suite's case")
    ap.add_argument("--simulated-only", action="store_true", help="skip the calibration-split-only refit")
    a = ap.parse_args()
    rows = []
    for part in a.parts.split(","):
        src = a.runs / part / a.model
        for label, simulated in (("calibration split only", 0), ("with held-out simulated", None))[a.simulated_only :]:
            dst = a.out / part / ("split" if simulated == 0 else "simulated")
            answer = refit(src, dst, simulated if simulated is not None else 2000)
            m = evaluate(
                dst / "best.pt",
                a.runs / part / "data",
                None,
                dst / "report",
                with_ceiling=False,
                gradcam=0,
                baselines=False,
            )
            row = {
                "part": part,
                "answers": label,
                "calibration_set": answer["calibration_set"],
                "temperature": answer["temperature"],
                "qhat": answer["qhat"],
                "test_n": m["n"],
                "test_coverage": m["set_coverage"],
                "test_set_size": m["set_size_mean"],
                "balanced_accuracy": m["balanced_accuracy"],
                "ece": m["ece"],
            }
            if part != "rig_b":  # fresh plates of the data's own distribution (the suite's first case)
                case = run_suite(
                    dst / "best.pt",
                    dst / "suite",
                    plates_per_class=a.plates,
                    cases=["grid_1_2_5" if part == "grid" else "any_thickness"],
                    with_ceiling=False,
                )[0]
                row.update(suite_n=case["n"], suite_coverage=case["set_coverage"], suite_set_size=case["set_size"])
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "recalibrate.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {a.out / 'recalibrate.json'}")


if __name__ == "__main__":
    main()
