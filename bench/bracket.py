"""The physics bracket checked against the simulator's own captures.

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/bracket.py [--captures 5000] [--draws 5000] [--pool 256]
        [--size 64] [--kvp 50] [--json PATH]

1. The bracket (``alloynet.physics.bracket``) for the nominal rig at ``--size`` px, any thickness 1-5 mm:
   lower and upper edge with their Monte-Carlo standard errors, from ``--draws`` profiles drawn from the model.
2. ``--captures`` captures simulated by ``RigSimulator`` as a rig takes them (sessions of 50 with their own
   gain drift and measured dark/flat levels, texture, inclusions, dead and hot pixels, quantisation), alloys
   balanced, thicknesses uniform in 1-5 mm: the lower edge's observer reads their row-mean profile and its
   measured accuracy is set beside what the Monte Carlo predicted; the physics fit (interquartile profile, the
   Gaussian observer of ``alloynet.physics.observer``) is read on the same captures.
3. The study's test set (docs/study/study.json: wedges 50 and 70 mm, weighted equally as in its store): its
   bracket beside every committed model and baseline row.

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/bracket.py --second-rig [--draws 2000] [--pool 64] [--seed 0]

``--second-rig`` instead: the bracket of the alloynet simulator beside that of the second rig
(``alloynet.physics.second_rig.SecondRigProfileModel``: its own forward model and noise, read as -ln of the
row-mean transmission, the statistic the lower edge's observer reads), 64 px, 50 and 70 mm Al wedges, plates of
1, 2 or 5 mm and of any thickness 1-5 mm (docs/second_rig.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from alloynet.evaluate.baselines import PhysicsFit  # noqa: E402
from alloynet.physics.alloys import ALLOY_NAMES, sample_plate  # noqa: E402
from alloynet.physics.bracket import MixtureObserver, bracket, full_row_profile, mixed_bracket  # noqa: E402
from alloynet.physics.measure import frame_level, wedge_profile  # noqa: E402
from alloynet.physics.observer import ThicknessPrior  # noqa: E402
from alloynet.physics.profile import ProfileModel  # noqa: E402
from alloynet.physics.second_rig import SecondRigConfig, SecondRigProfileModel  # noqa: E402
from alloynet.physics.simulator import RigConfig, RigSimulator, plate_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def simulate(
    rig: RigConfig, n: int, prior: ThicknessPrior, seed: int, session: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw captures [n, C, H, W], their levels [n, C, 2], labels [n]), alloys cycling."""
    sim, rng = RigSimulator(rig), np.random.default_rng(seed)
    images, cals, labels = [], [], []
    nominal = prior.sample(n, rng)
    for i in range(n):
        if i % session == 0:
            gain = sim.session_gain(rng)
            dark, flat = sim.dark_flat_frames(rng, gain)
            levels = np.stack([frame_level(dark), frame_level(flat)], -1)  # [C, 2]
        k = i % len(ALLOY_NAMES)
        plate = sample_plate(ALLOY_NAMES[k], float(nominal[i]), rng, f"bench-{i}")
        cap = sim.capture(plate, rng, gain_scale=gain)
        images.append(cap.image)
        cals.append(levels)
        labels.append(k)
    return np.stack(images), np.stack(cals), np.asarray(labels)


def balanced(pred: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    recall = np.array([(pred[y == c] == c).mean() for c in range(k)])
    n = np.array([(y == c).sum() for c in range(k)])
    return float(recall.mean()), float(np.sqrt((recall * (1 - recall) / n).sum()) / k)


def _edges(br) -> dict:
    return {
        "lower": br.lower.accuracy,
        "lower_se": br.lower.se,
        "upper": br.upper.accuracy,
        "upper_se": br.upper.se,
        "width": br.width,
        "width_se": br.width_se,
        "hard_pair": br.hard_pairs[0],
    }


def second_rig(args) -> list[dict]:
    """The bracket of both rig models for each wedge and thickness prior (docs/second_rig.md's table)."""
    priors = {
        "1, 2 or 5 mm": ThicknessPrior(values_mm=(1.0, 2.0, 5.0)),
        "any, 1-5 mm": ThicknessPrior(range_mm=(1.0, 5.0)),
    }
    out = []
    for wedge in (50.0, 70.0):
        rig = RigConfig(height=64, width=64, wedge_mm=wedge)
        models = {
            "alloynet": ProfileModel(rig, 32),
            "second_rig": SecondRigProfileModel(SecondRigConfig.from_nominal(rig), 32),
        }
        for name, prior in priors.items():
            row: dict = {"wedge_mm": wedge, "prior": name}
            for which, model in models.items():
                t0 = time.perf_counter()
                row[which] = _edges(
                    bracket(model, ALLOY_NAMES, prior, draws=args.draws, pool=args.pool, seed=args.seed)
                )
                row[which]["seconds"] = round(time.perf_counter() - t0, 1)
            out.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| wedge | thickness | bracket, alloynet simulator | bracket, second rig "
        "| most confused pair (lower edge), alloynet / second |"
    )
    print("|---|---|---|---|---|")
    for r in out:
        a, b = r["alloynet"], r["second_rig"]
        print(
            f"| {r['wedge_mm']:.0f} mm | {r['prior']} "
            f"| {a['lower']:.3f}-{a['upper']:.3f} ± {max(a['lower_se'], a['upper_se']):.3f} "
            f"| {b['lower']:.3f}-{b['upper']:.3f} ± {max(b['lower_se'], b['upper_se']):.3f} "
            f"| {a['hard_pair']['pair']} {a['hard_pair']['confused']:.2f} / {b['hard_pair']['confused']:.2f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captures", type=int, default=5000)
    ap.add_argument("--draws", type=int, default=5000)
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--kvp", default="50", help="one or several kVp, e.g. 40,50,60")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--second-rig", action="store_true", help="the bracket of the alloynet simulator and the second rig"
    )
    args = ap.parse_args()
    if args.second_rig:
        rows = second_rig(args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    kvp = [float(v) for v in args.kvp.split(",")]
    rig = RigConfig(height=args.size, width=args.size, kvp=kvp)
    prior = ThicknessPrior(range_mm=(1.0, 5.0))
    model = ProfileModel(rig, 32)
    out: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}",
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    t0 = time.perf_counter()
    obs = MixtureObserver(model, ALLOY_NAMES, prior, args.pool, seed=args.seed)
    br = bracket(model, ALLOY_NAMES, prior, draws=args.draws, seed=args.seed, observer=obs)
    out["bracket"] = {
        "lower": br.lower.accuracy,
        "lower_se": br.lower.se,
        "upper": br.upper.accuracy,
        "upper_se": br.upper.se,
        "width": br.width,
        "width_se": br.width_se,
        "lower_heavy_light": br.lower.heavy_light,
        "upper_heavy_light": br.upper.heavy_light,
        "hard_pairs": br.hard_pairs[:3],
        "seconds": time.perf_counter() - t0,
    }
    print(br.markdown(), flush=True)

    t0 = time.perf_counter()
    images, cals, y = simulate(rig, args.captures, prior, args.seed + 100)
    rows = plate_rows(rig)
    x_mean = full_row_profile(images, cals, 32, rows)
    x_iqm = wedge_profile(images, cals, 32, rows)
    k = len(ALLOY_NAMES)
    measured = balanced(obs.log_likelihoods(x_mean).argmax(1), y, k)
    measured_iqm = balanced(obs.log_likelihoods(x_iqm).argmax(1), y, k)
    fit = PhysicsFit({rig.wedge_mm: rig}, prior, ALLOY_NAMES, seed=args.seed)
    physics_fit = balanced(fit.predict(x_iqm, np.full(len(y), rig.wedge_mm))[0].argmax(1), y, k)
    gap = measured[0] - br.lower.accuracy
    out["captures"] = {
        "n": int(len(y)),
        "lower_observer_measured": measured[0],
        "measured_se": measured[1],
        "lower_observer_on_interquartile_profile": measured_iqm[0],
        "physics_fit_measured": physics_fit[0],
        "physics_fit_se": physics_fit[1],
        "measured_minus_predicted": gap,
        "combined_se": float(np.hypot(measured[1], br.lower.se)),
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(out["captures"], indent=1), flush=True)

    study = json.loads((ROOT / "docs/study/study.json").read_text())["test_set"]
    srigs = [
        (
            RigConfig(
                **{
                    **rig.model_dump(),
                    "wedge_mm": w,
                    "height": study["size"][0],
                    "width": study["size"][1],
                    "kvp": study["kvp"],
                    "dose": study["dose"],
                }
            ),
            1.0,
        )
        for w in study["wedges_mm"]
    ]
    sb = mixed_bracket(
        srigs,
        ThicknessPrior.of(study["thicknesses_mm"], study["thickness_range_mm"]),
        draws=args.draws // 2,
        pool=args.pool // 2,
        seed=args.seed,
    )
    res = pd.read_csv(ROOT / "docs/study/results.csv")
    best = res.groupby(["arch", "loss", "rho"]).balanced_accuracy.mean().sort_values(ascending=False)
    out["study"] = {
        "lower": sb["lower"],
        "lower_se": sb["lower_se"],
        "upper": sb["upper"],
        "upper_se": sb["upper_se"],
        "rows": {" ".join(map(str, i)): float(v) for i, v in best.items()},
    }
    print(json.dumps(out["study"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
