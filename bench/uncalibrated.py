"""Answers to captures sent without calibration or wedge size (issue 23, "honest answers without calibration").

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/uncalibrated.py --fresh STORE CHECKPOINT [...]

Each checkpoint answers every capture of the fresh store twice: as sent with its sidecar (calibration levels
and wedge size), and as a client sends a bare image (both zero: what ``WithheldLevels`` feeds the model,
and what the exported graph sees when a request carries only ``image``). Printed per checkpoint and case:
five-class balanced accuracy, the 95 % set's coverage (class-balanced, as ``evaluate``) and mean size, the mean
top probability, the share of answers at p >= 0.99 and how many of them are right, and the share flagged
calibration_missing. The target: the set covers the truth at the model's coverage on such captures, and no
guess is answered with p = 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402


def run(checkpoint: Path, fresh: Path) -> dict:
    from alloynet.contract import FLAG_NAMES
    from alloynet.data.dataset import CaptureDataset
    from alloynet.data.manifest import open_dataset, read_manifest
    from alloynet.evaluate.metrics import classification_metrics
    from alloynet.evaluate.predict import predict
    from alloynet.evaluate.report import answer_metrics
    from alloynet.models.answer import WithheldLevels
    from alloynet.models.checkpoint import load_model

    torch.manual_seed(0)
    model, meta = load_model(checkpoint, "cpu")
    df = read_manifest(fresh / "manifest.csv")
    df["split"] = "test"
    st, df = open_dataset(fresh, df)
    ds = CaptureDataset(st, df[df.labelled & (df.label >= 0)], "test")
    names = list(meta["class_names"])
    out = {}
    for case, m in (("with calibration", model), ("without calibration", WithheldLevels(model))):
        p = predict(m, DataLoader(ds, batch_size=128))
        a = answer_metrics(p, names, float(model.answer.coverage))
        top = p["probs"].max(1)
        out[case] = {
            "n": int(len(p["y"])),
            "balanced_accuracy": classification_metrics(p["y"], p["probs"], names)["balanced_accuracy"],
            "set_coverage": a["set_coverage"],
            "set_size_mean": a["set_size_mean"],
            "top_probability_mean": float(top.mean()),
            "share_p_ge_0.99": float((top >= 0.99).mean()),
            "right_at_p_ge_0.99": float((p["probs"].argmax(1) == p["y"])[top >= 0.99].mean())
            if (top >= 0.99).any()
            else None,
            "flag_calibration_missing": float(p["flags"][:, list(FLAG_NAMES).index("calibration_missing")].mean()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fresh", type=Path, required=True, help="a store of fresh labelled captures")
    ap.add_argument("checkpoints", type=Path, nargs="+")
    a = ap.parse_args()
    for ck in a.checkpoints:
        res = run(ck, a.fresh)
        print(json.dumps({"checkpoint": str(ck), **res}, default=float), flush=True)
        for case, r in res.items():
            print(
                f"{ck}: {case}: five-class {r['balanced_accuracy']:.3f}, set coverage {r['set_coverage']:.3f} "
                f"size {r['set_size_mean']:.2f}, top p {r['top_probability_mean']:.3f}, "
                f"p>=0.99 {r['share_p_ge_0.99']:.3f} (right {r['right_at_p_ge_0.99']}), "
                f"flagged {r['flag_calibration_missing']:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
