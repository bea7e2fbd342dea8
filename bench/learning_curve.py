"""The learning curve of `alloynet train --store STORE` with no config, on captures a lab imports (issue 23).

    nice -n 10 OMP_NUM_THREADS=1 .venv/bin/python bench/learning_curve.py --rig second_rig --out /work/bench-out/lc
    nice -n 10 OMP_NUM_THREADS=1 .venv/bin/python bench/learning_curve.py --rig alloynet --out /work/bench-out/lc
    .venv/bin/python bench/learning_curve.py --table --out /work/bench-out/lc      # the markdown table of both

Per rig (``second_rig``: a rig the simulator does not describe; ``alloynet``: the project's own simulator), one
pool of plates of any thickness 1-5 mm (one capture each, 50 and 70 mm wedges, 64 px, seeded) is written as a
lab has it: a 16-bit TIFF per capture and a labels CSV with the alloy, the nominal thickness, the plate, the wedge
and the calibration LEVELS (no frames, nothing only a simulator knows). For each size N (labelled plates per
alloy: 5, 10, 20, 50, 150, 600) the first N plates of each alloy are imported with `alloynet import` into their own
store (its manifest splits them 70/15/15 by plate, as for a lab) and the default recipe trains on it
(``load_config(None)``, what `train --store` runs). Each model is scored on 1,000 fresh captures of the same rig
(another seed, imported the same way) beside that rig's physics bracket (lower edge): five-class balanced accuracy,
heavy vs light, the 95 % set's coverage and mean size, and the physics fit alone (the nominal forward model, no
training data) on the same captures. Results go to ``<out>/<rig>/results.json``; finished sizes are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZES = (5, 10, 20, 50, 150, 600)
WEDGES = (50.0, 70.0)
FRESH_PLATES = 200  # per alloy: 1,000 fresh captures
RIG_SEED = {"second_rig": 11, "alloynet": 21}


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", flush=True)


def simulate(where: Path, rig: str, plates: int, seed: int, test_fraction: float) -> Path:
    """A simulated store of ``plates`` plates per alloy (train/val pool; plus the test extra), once."""
    from alloynet.captures.stores import LocalStore
    from alloynet.data.simulate import DatasetSpec, simulate_dataset

    done = where / ".done"
    if not done.exists():
        spec = DatasetSpec.model_validate(
            {
                "n_max": plates,
                "imbalance_ratio": 1.0,
                "imbalance": "balanced",
                "captures_per_plate": 1,
                "wedges_mm": list(WEDGES),
                "thickness_range_mm": [1.0, 5.0],
                "seed": seed,
                "simulator": rig,
                "test_fraction": test_fraction,
                "id_prefix": f"{rig[:3]}{seed}",
                "rig": {"height": 64, "width": 64},
            }
        )
        t0 = time.perf_counter()
        simulate_dataset(spec, LocalStore(where))
        done.write_text("")
        log(f"simulated {where} in {time.perf_counter() - t0:.0f} s")
    return where


def lab_folder(sim: Path, lab: Path) -> list[dict]:
    """The simulated store's captures as TIFFs under ``lab`` (once); returns one row per capture (the labels
    CSV's columns), in plate order."""
    from alloynet.captures.image import decode_image
    from alloynet.captures.stores import LocalStore

    index = lab / "index.json"
    if index.exists():
        return json.loads(index.read_text())
    st, rows = LocalStore(sim), []
    for key in sorted(i.key for i in st.list("captures/") if i.key.endswith(".json")):
        sc = json.loads(st.get(key))
        img = decode_image(st.get("captures/" + sc["image"]["file"]), key)
        rel = f"{sc['truth']['alloy']}/{sc['capture_id']}.tif"
        (lab / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img[0])).save(lab / rel)
        rows.append(
            {
                "file": rel,
                "alloy": sc["truth"]["alloy"],
                "thickness_mm": sc["truth"]["nominal_thickness_mm"],
                "plate_id": sc["plate_id"],
                "wedge_mm": sc["rig"]["wedge_mm"],
                "dark": ";".join(f"{v:.2f}" for v in sc["calibration"]["dark_adu"]),
                "flat": ";".join(f"{v:.2f}" for v in sc["calibration"]["flat_adu"]),
            }
        )
    index.write_text(json.dumps(rows))
    return rows


def write_labels(rows: list[dict], path: Path) -> Path:
    cols = ("file", "alloy", "thickness_mm", "plate_id", "wedge_mm", "dark", "flat")
    path.write_text(
        "\n".join(
            [",".join(cols)]
            + [",".join(f"{r[c]:g}" if isinstance(r[c], float) else str(r[c]) for c in cols) for r in rows]
        )
        + "\n"
    )
    return path


def first_plates(rows: list[dict], n: int) -> list[dict]:
    """The first ``n`` plates of each alloy (plate ids in order: the pool's order is already shuffled)."""
    plates: dict[str, list[str]] = {}
    for r in rows:
        ids = plates.setdefault(r["alloy"], [])
        if r["plate_id"] not in ids:
            ids.append(r["plate_id"])
    keep = {p for ids in plates.values() for p in sorted(ids)[:n]}
    return [r for r in rows if r["plate_id"] in keep]


def subset_folder(lab: Path, rows: list[dict], where: Path) -> Path:
    """A lab folder holding only ``rows``' files (hard links into the pool's) and their labels CSV."""
    if not (where / "labels.csv").exists():
        for r in rows:
            (where / r["file"]).parent.mkdir(parents=True, exist_ok=True)
            if not (where / r["file"]).exists():
                os.link(lab / r["file"], where / r["file"])
        write_labels(rows, where / "labels.csv")
    return where / "labels.csv"


def import_store(labels: Path, store: Path, split: int = 0) -> None:
    """`alloynet import` as a lab runs it: the labels CSV, the tube voltage; levels from the CSV; ``split`` seeds
    the manifest's train/val/test split by plate."""
    if (store / "manifest.csv").exists():
        return
    exe = str(Path(sys.executable).parent / "alloynet")
    t0 = time.perf_counter()
    cmd = [exe, "import", str(labels), str(store), "--kvp", "50", "--seed", str(split)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"import failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    log(f"imported {labels.name} into {store} in {time.perf_counter() - t0:.1f} s")


def ceiling(rig: str, out: Path) -> dict:
    """The rig's physics bracket for this prior (1-5 mm, both wedges, 64 px), once per rig: its lower edge
    (``accuracy``, ``heavy_light``: the best observer) and its upper edge, each with its Monte-Carlo error."""
    from alloynet.evaluate.report import ceiling as rig_ceiling
    from alloynet.physics.observer import ThicknessPrior
    from alloynet.physics.second_rig import SecondRigConfig
    from alloynet.physics.simulator import RigConfig

    path = out / "bracket.json"
    if path.exists():
        return json.loads(path.read_text())
    rigs = {}
    for w in WEDGES:
        nominal = RigConfig(height=64, width=64, wedge_mm=w)
        rigs[w] = (SecondRigConfig.from_nominal(nominal) if rig == "second_rig" else nominal, 1)
    t0 = time.perf_counter()
    c = rig_ceiling(rigs, ThicknessPrior(range_mm=(1.0, 5.0)))
    res = {
        "accuracy": c["ceiling_lower"],
        "accuracy_se": c["ceiling_lower_se"],
        "heavy_light": c["ceiling_heavy_light"],
        "upper": c["ceiling_upper"],
        "upper_se": c["ceiling_upper_se"],
        "heavy_light_upper": c["ceiling_heavy_light_upper"],
    }
    path.write_text(json.dumps(res))
    log(f"bracket {res} in {time.perf_counter() - t0:.0f} s")
    return res


def fresh_manifest(store: Path):
    """The fresh store's manifest with every capture in the test split (none of them trains anything)."""
    from alloynet.data.manifest import read_manifest

    df = read_manifest(store / "manifest.csv")
    df["split"] = "test"
    return df


def one_size(
    rig: str,
    n: int,
    seed: int,
    out: Path,
    pool: list[dict],
    lab: Path,
    fresh: Path,
    epochs: int | None,
    overrides: dict,
    arm: str = "",
    split: int = 0,
) -> dict:
    from alloynet.evaluate import evaluate
    from alloynet.train import load_config, train

    tag = f"{arm + '-' if arm else ''}n{n}-s{seed}" + "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))
    tag += f"-split{split}" if split else ""
    done = out / tag / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    store = out / (f"store-n{n}" + (f"-split{split}" if split else ""))
    import_store(subset_folder(lab, first_plates(pool, n), out / f"lab-n{n}"), store, split)
    cfg = load_config(
        None,
        {
            "data.store": str(store),
            "out_dir": str(out / tag / "run"),
            "seed": seed,
            "progress": False,
            **({"epochs": epochs} if epochs else {}),
            **overrides,
        },
    )
    t0 = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - t0
    m = evaluate(result.checkpoint, fresh, fresh_manifest(fresh), out / tag / "fresh", with_ceiling=False, gradcam=0)
    term = m.get("physics_term") or {}
    corr = term.get("correction") or {}
    row = {
        "rig": rig,
        "arm": arm,
        "plates_per_alloy": n,
        "seed": seed,
        "split": split,
        "overrides": overrides,
        "train_s": round(train_s),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "n_fresh": m["n"],
        **{
            k: m.get(k)
            for k in ("balanced_accuracy", "heavy_light_balanced_accuracy", "set_coverage", "set_size_mean", "ece")
        },
        "term_weight": term.get("weight"),
        "term_alone": term.get("term_alone"),
        "trunk_alone": term.get("trunk_alone"),
        "correction": corr.get("reason"),
        "physics_fit": (m.get("baselines") or {}).get("physics_fit"),
    }
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row, indent=1, default=str))
    log(
        f"{rig} n={n} seed={seed}: five-class {row['balanced_accuracy']:.3f}, heavy vs light "
        f"{row['heavy_light_balanced_accuracy']:.3f}, set {row['set_coverage']:.3f} ({row['set_size_mean']:.2f}), "
        f"term {row['term_weight']:.2f} alone {row['term_alone']}, trunk alone {row['trunk_alone']:.3f}, "
        f"{train_s:.0f} s"
    )
    return row


def with_references(rig: str, n: int, seed: int, out: Path, pool: list[dict], fresh: Path, arm: str = "") -> dict:
    """The same size with a lab's reference captures beside the plates (`alloynet rig references --folder
    --levels-only`: open beam and the wedge alone per session, Al1050 at 1, 2 and 5 mm; levels only), imported
    together (the labels CSV's role column), `alloynet rig calibrate STORE` (which adds the rig profile to the
    store), then `alloynet train --store STORE` with no other option: the default recipe starts the physics
    term from the store's newest rig profile. The physics fit alone is then the calibrated forward model's."""
    from alloynet.evaluate import evaluate
    from alloynet.models.checkpoint import load_checkpoint

    tag = f"refs-{arm or 'store'}-n{n}-s{seed}"
    done = out / tag / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    exe = str(Path(sys.executable).parent / "alloynet")
    lab = out / f"lab-refs-n{n}"
    if not (lab / "labels.csv").exists():
        subset_folder(out / "lab", first_plates(pool, n), lab)
        (lab / "labels.csv").unlink()
        res = subprocess.run(
            [
                exe,
                "rig",
                "references",
                str(lab),
                "--folder",
                "--levels-only",
                "--simulator",
                rig,
                "--wedge-mm",
                "50",
                "--wedge-mm",
                "70",
                "--seed",
                str(seed + 7),
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            sys.exit(f"rig references failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        refs = (lab / "reference-labels.csv").read_text().splitlines()
        cols = refs[0].split(",")
        plates = [{**r, "role": "plate"} for r in first_plates(pool, n)]
        rows = plates + [dict(zip(cols, line.split(","))) for line in refs[1:]]

        def cell(v) -> str:
            return f"{v:g}" if isinstance(v, float) else str(v if v is not None else "")

        (lab / "labels.csv").write_text(
            "\n".join([",".join(cols)] + [",".join(cell(r.get(c)) for c in cols) for r in rows]) + "\n"
        )
    store, run_dir = out / f"store-refs-n{n}", out / tag / "run"
    import_store(lab / "labels.csv", store)
    (out / tag).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for cmd in (
        [exe, "rig", "fit", str(store)],
        [exe, "train", "--store", str(store), "--out", str(run_dir), "--seed", str(seed)],
    ):
        if cmd[1] == "train" and not any((store / "rig-profiles").glob("*.yaml")):
            break
        res = subprocess.run(cmd, capture_output=True, text=True)
        (out / tag / f"{cmd[1]}.log").write_text(res.stdout + res.stderr)
        log(f"{' '.join(cmd[1:3])}: exit {res.returncode}")
        if res.returncode != 0:
            row = {
                "rig": rig,
                "arm": f"refs-{arm or 'store'}",
                "plates_per_alloy": n,
                "seed": seed,
                "failed": " ".join(cmd[1:3]),
                "output": (res.stdout + res.stderr)[-1500:],
            }
            done.write_text(json.dumps(row, indent=1))
            return row
    train_s = time.perf_counter() - t0
    ckpt = run_dir / "best.pt"
    m = evaluate(ckpt, fresh, fresh_manifest(fresh), out / tag / "fresh", with_ceiling=False, gradcam=0)
    term = m.get("physics_term") or {}
    row = {
        "rig": rig,
        "arm": f"refs-{arm or 'store'}",
        "plates_per_alloy": n,
        "seed": seed,
        "overrides": {},
        "train_s": round(train_s),
        "best_epoch": int(load_checkpoint(ckpt)["epoch"]),
        "n_fresh": m["n"],
        **{
            k: m.get(k)
            for k in ("balanced_accuracy", "heavy_light_balanced_accuracy", "set_coverage", "set_size_mean", "ece")
        },
        "term_weight": term.get("weight"),
        "term_alone": term.get("term_alone"),
        "trunk_alone": term.get("trunk_alone"),
        "physics_fit": (m.get("baselines") or {}).get("physics_fit"),
        "rig_profile": m.get("rig_profile"),
    }
    done.write_text(json.dumps(row, indent=1, default=str))
    log(
        f"{rig} n={n} with references: five-class {row['balanced_accuracy']:.3f}, heavy vs light "
        f"{row['heavy_light_balanced_accuracy']:.3f}, set {row['set_coverage']:.3f} ({row['set_size_mean']:.2f})"
    )
    return row


def run(a) -> None:
    out = a.out / a.rig
    out.mkdir(parents=True, exist_ok=True)
    seed = RIG_SEED[a.rig]
    sizes = [int(s) for s in a.sizes.split(",")]
    pool_sim = simulate(out / "pool-sim", a.rig, max(SIZES), seed, 0.0)
    pool = lab_folder(pool_sim, out / "lab")
    fresh_sim = simulate(out / "fresh-sim", a.rig, FRESH_PLATES, seed + 1000, 0.0)
    fresh_rows = lab_folder(fresh_sim, out / "fresh-lab")
    import_store(subset_folder(out / "fresh-lab", fresh_rows, out / "fresh-subset"), out / "fresh")
    ceil = ceiling(a.rig, out)
    overrides = dict(kv.split("=", 1) for kv in a.set)
    overrides = {k: json.loads(v) if v[:1] in "[{0123456789-tfn" else v for k, v in overrides.items()}
    if a.references:
        rows = [with_references(a.rig, n, s, out, pool, out / "fresh", a.arm) for n in sizes for s in range(a.seeds)]
        print(json.dumps(rows, indent=1, default=str))
        return
    rows = [
        one_size(a.rig, n, s, out, pool, out / "lab", out / "fresh", a.epochs, overrides, a.arm, a.split)
        for n in sizes
        for s in range(a.seeds)
    ]
    res = {
        "rig": a.rig,
        "ceiling": ceil,
        "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d}",
    }
    name = f"results{'-' + a.arm if a.arm else ''}{f'-split{a.split}' if a.split else ''}.json"
    (out / name).write_text(json.dumps(res, indent=1, default=str))
    print(table([{**r, "ceiling": ceil} for r in rows]))


def collect(out: Path, arms: list[str]) -> list[dict]:
    """Every finished size of every rig under ``out``: per (rig, size, seed), the first of ``arms`` that has it."""
    rows = []
    for rig_dir in sorted(p for p in out.iterdir() if (p / "bracket.json").exists()):
        ceil = json.loads((rig_dir / "bracket.json").read_text())
        found: dict[tuple[int, int], dict] = {}
        for arm in reversed(arms):  # earlier arms win
            for f in rig_dir.glob(f"{arm + '-' if arm else ''}n*-s*/result.json"):
                r = json.loads(f.read_text())
                if not r.get("overrides") and (r.get("arm") or "") == arm:
                    found[(r["plates_per_alloy"], r["seed"])] = {**r, "ceiling": ceil}
        rows += [found[k] for k in sorted(found)]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| rig | plates per alloy | seeds | five-class | heavy vs light | set coverage | set size | term alone | "
        "physics fit alone (nominal forward model) | bracket lower edge (heavy vs light) |",
        "|---" * 10 + "|",
    ]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["rig"], r["plates_per_alloy"]), []).append(r)
    for (rig, n), rs in sorted(groups.items()):

        def mean(k: str, rs: list[dict] = rs) -> str:
            v = [float(r[k]) for r in rs if r.get(k) is not None]
            return f"{np.mean(v):.3f}" if v else "-"

        pf = [r["physics_fit"]["balanced_accuracy"] for r in rs if r.get("physics_fit")]
        pf_hl = [r["physics_fit"]["heavy_light_balanced_accuracy"] for r in rs if r.get("physics_fit")]
        c = rs[0]["ceiling"]
        lines.append(
            f"| {rig} | {n} | {len(rs)} | {mean('balanced_accuracy')} "
            f"| {mean('heavy_light_balanced_accuracy')} "
            f"| {mean('set_coverage')} | {mean('set_size_mean')} | {mean('term_alone')} | "
            f"{np.mean(pf):.3f} ({np.mean(pf_hl):.3f}) | {c['accuracy']:.3f} ({c['heavy_light']:.3f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rig", choices=sorted(RIG_SEED), default="second_rig")
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-learning-curve"))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per size")
    ap.add_argument("--split", type=int, default=0, help="seed of the store's split by plate (alloynet import --seed)")
    ap.add_argument("--epochs", type=int, default=None, help="cap the default recipe's epochs (budget)")
    ap.add_argument("--set", action="append", default=[], help="a config override key=value (arms of a comparison)")
    ap.add_argument(
        "--references", action="store_true", help="the sizes with reference captures (calibrated into the store)"
    )
    ap.add_argument("--arm", default="", help="a name for this recipe's runs (kept apart from the default's)")
    ap.add_argument("--table", action="store_true", help="print the table of every rig's finished sizes (--arms)")
    ap.add_argument("--arms", default="", help="with --table: arms to read, first wins (e.g. final,cv)")
    a = ap.parse_args()
    if a.table:
        print(table(collect(a.out, a.arms.split(","))))
        return
    run(a)


if __name__ == "__main__":
    main()
