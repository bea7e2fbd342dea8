"""A finished run's physics tables refitted under the current code (its learnt weights kept), evaluated on the
robustness suite's case folders: what a change to the physics term alone does, without retraining.

    OMP_NUM_THREADS=1 .venv/bin/python bench/refit_physics.py --run /work/bench-out/range1/own \\
        --cases any_thickness,unseen_wedge --out /tmp/alloynet-bench-refit

``--run`` is a bench/identification.py part folder (``data/``, ``profile_mlp/best.pt``, ``robustness/<case>/data``);
the case ``test`` is the run's own test split.
The refitted model's tables are built as training builds them now (the wedge sizes of ``table_wedges``, each
the run's forward model, ``alloynet.data.synthetic.forward_rigs``); everything else is the checkpoint's.
Writes ``<out>/refit_physics.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from alloynet.captures.stores import LocalStore  # noqa: E402
from alloynet.data.manifest import manifest_path  # noqa: E402
from alloynet.data.rigs import data_prior, rig_settings  # noqa: E402
from alloynet.data.synthetic import SyntheticConfig, forward_rigs  # noqa: E402
from alloynet.evaluate.report import evaluate  # noqa: E402
from alloynet.evaluate.robustness import held_out_manifest  # noqa: E402
from alloynet.models.checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from alloynet.models.physics_prior import physics_spec, table_wedges  # noqa: E402


def refit(src: Path, data: Path, dst: Path) -> dict:
    ckpt = load_checkpoint(src)
    spec = copy.deepcopy(ckpt["model_spec"])
    old = spec["physics"]
    store, rows = LocalStore(data), pd.read_csv(manifest_path(data))
    labelled = rows[rows.labelled.astype(bool) & (rows.label >= 0)]
    rigs = rig_settings(store, labelled[labelled.split == "train"])
    spec["physics"] = physics_spec(table_wedges(rigs), old["channels"], ckpt["image_size"][1], old["bins"])
    model = build_model(spec)
    kept = ("physics.weight", "physics.span_sd")  # learnt, or measured on the training captures: not tables
    state = {k: v for k, v in ckpt["model"].items() if not (k.startswith("physics.") and k not in kept)}
    model.load_state_dict(state, strict=False)
    synthetic = SyntheticConfig.model_validate(ckpt["config"]["data"]["synthetic"])  # the run's forward model
    model.physics.fit(
        forward_rigs(synthetic, rigs, model.physics.wedges_mm.tolist()),
        data_prior(labelled),
        spec["class_names"],
        seed=ckpt["config"]["seed"],
        shape_wedges=list(rigs),
    )
    new = dict(ckpt, model_spec=spec, model=model.state_dict())
    dst.mkdir(parents=True, exist_ok=True)
    save_checkpoint(new, dst / "best.pt")
    return {
        "wedges_mm": spec["physics"]["wedges_mm"],
        "was": old["wedges_mm"],
        "tail": spec["physics"].get("tail"),
        "tail_was": old.get("tail"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--cases", default="any_thickness,unseen_wedge")
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-refit"))
    a = ap.parse_args()
    res = {"refit": refit(a.run / "profile_mlp" / "best.pt", a.run / "data", a.out), "cases": {}}
    print(res["refit"], flush=True)
    for case in a.cases.split(","):
        if case == "test":  # the run's own test split
            st, df = LocalStore(a.run / "data"), pd.read_csv(manifest_path(a.run / "data"))
        else:
            st = LocalStore(a.run / "robustness" / case / "data")
            df = held_out_manifest(st, 1000, True)
        for tag, ck in (("as trained", a.run / "profile_mlp" / "best.pt"), ("refitted", a.out / "best.pt")):
            m = evaluate(
                ck, st, df, a.out / tag.replace(" ", "_") / case, with_ceiling=False, gradcam=0, baselines=False
            )
            row = {
                k: m[k] for k in ("balanced_accuracy", "heavy_light_balanced_accuracy", "set_coverage", "flag_rates")
            }
            res["cases"][f"{case} {tag}"] = row
            print(case, tag, json.dumps(row), flush=True)
    (a.out / "refit_physics.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
