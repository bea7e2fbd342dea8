"""The second rig beside the alloynet simulator: speed, -ln T differences, ideal-observer ceilings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/second_rig.py speed [--n 200]
    OMP_NUM_THREADS=1 .venv/bin/python bench/second_rig.py differences [--captures 40]
    OMP_NUM_THREADS=1 .venv/bin/python bench/second_rig.py ceilings [--plates 200] [--out ceilings.json]

``differences``: the same (exact nominal) plate captured on both rigs at the same nominal settings, 64 px;
the profile is what a user computes (-ln of the row mean of (S - dark)/(flat - dark) with the capture's
calibration levels, dead/hot pixels left out, 32 bins), averaged over captures; the table gives the
second rig's relative difference at the plate-only strip, along the ramp and at the thick end.
``ceilings``: ``separability`` (ideal observer) for both rigs, 64x64, 50 and 70 mm Al wedges, thicknesses
(1, 2, 5) mm and a continuous 1-5 mm prior (33 points).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from alloynet.physics import RigConfig, RigSimulator, get_alloy, sample_plate  # noqa: E402
from alloynet.physics.profile import ProfileModel  # noqa: E402
from alloynet.physics.second_rig import SecondRig, SecondRigConfig, SecondRigProfileModel  # noqa: E402
from alloynet.physics.separability import separability  # noqa: E402


def user_profile(image: np.ndarray, dark: float, flat: float, bins: int = 32) -> np.ndarray:
    good = (image > 0) & (image < 65535)
    t = np.where(good, (image.astype(float) - dark) / (flat - dark), 0.0).sum(0) / good.sum(0)
    edges = np.linspace(0, image.shape[-1], bins + 1).astype(int)
    return np.add.reduceat(-np.log(np.maximum(t, 1e-12)), edges[:-1]) / np.diff(edges)


def speed(a) -> None:
    plate = sample_plate("Al6082", 2.0, np.random.default_rng(0), "bench")
    print(f"{platform.processor() or platform.machine()}, 1 core, {a.n} captures per row")
    print("| size | second rig captures/s | ms/capture | alloynet simulator captures/s |\n|---|---|---|---|")
    for size in (64, 256):
        rig = RigConfig(height=size, width=size)
        second, nominal = SecondRig(SecondRigConfig.from_nominal(rig)), RigSimulator(rig)
        rates = []
        for sim in (second, nominal):
            rng = np.random.default_rng(1)
            sim.capture(plate, rng)
            n = a.n if size == 64 else max(10, a.n // 10)
            t0 = time.perf_counter()
            for _ in range(n):
                sim.capture(plate, rng)
            rates.append(n / (time.perf_counter() - t0))
        print(f"| {size}x{size} | {rates[0]:.0f} | {1e3 / rates[0]:.1f} | {rates[1]:.0f} |")


def differences(a) -> None:
    print(f"mean of {a.captures} captures per rig and plate, 64x64, 32 bins; relative difference second/alloynet - 1")
    print(
        "| wedge | plate | plate-only strip | 1/4 ramp | mid ramp | 3/4 ramp | thick end (last 8 columns) "
        "| alloynet -ln T at thick end |\n|---|---|---|---|---|---|---|---|"
    )
    for wedge in (50.0, 70.0):
        rig = RigConfig(height=64, width=64, wedge_mm=wedge)
        nominal, second = RigSimulator(rig), SecondRig(SecondRigConfig.from_nominal(rig))
        for alloy, t in (("Al1050", 1.0), ("Al6082", 2.0), ("Al5083", 2.0), ("Al7075", 5.0)):
            plate = sample_plate(alloy, t, np.random.default_rng(0), "p", exact=True)
            pn = np.mean(
                [
                    user_profile(
                        nominal.capture(plate, np.random.default_rng(i)).image[0],
                        rig.dark_offset_adu,
                        rig.flat_target_adu,
                    )
                    for i in range(a.captures)
                ],
                0,
            )
            caps = [second.capture(plate, np.random.default_rng(i)) for i in range(a.captures)]
            p2 = np.mean([user_profile(c.image[0], c.dark_adu[0], c.flat_adu[0]) for c in caps], 0)
            rel = p2 / pn - 1
            cells = [rel[:2].mean(), rel[9], rel[17], rel[25], rel[-4:].mean()]
            print(
                f"| {wedge:.0f} mm | {alloy} {t:g} mm | "
                + " | ".join(f"{100 * c:+.1f} %" for c in cells)
                + f" | {pn[-4:].mean():.2f} |"
            )
        gap = [
            ProfileModel(rig).profile(get_alloy(x).nominal_fractions(), get_alloy(x).density_g_cm3, 2.0)
            for x in ("Al5083", "Al6082")
        ]
        rel = gap[0] / gap[1] - 1
        print(
            f"| {wedge:.0f} mm | for scale: Al5083 vs Al6082, 2 mm, nominal rig | "
            + " | ".join(f"{100 * c:+.1f} %" for c in [rel[:2].mean(), rel[9], rel[17], rel[25], rel[-4:].mean()])
            + " | |"
        )


def ceilings(a) -> None:
    priors = {"(1, 2, 5) mm": (1.0, 2.0, 5.0), "1-5 mm continuous (33 points)": tuple(np.linspace(1, 5, 33))}
    out = []
    for wedge in (50.0, 70.0):
        rig = RigConfig(height=64, width=64, wedge_mm=wedge)
        cfg = SecondRigConfig.from_nominal(rig)
        for prior, ts in priors.items():
            t0 = time.perf_counter()
            nom = separability(rig, thicknesses_mm=ts, plates=a.plates, seed=0)
            sec = separability(
                cfg, thicknesses_mm=ts, plates=a.plates, seed=0, profile_model=SecondRigProfileModel(cfg)
            )
            row = {
                "wedge_mm": wedge,
                "prior": prior,
                "alloynet": nom.ceiling_accuracy,
                "second_rig": sec.ceiling_accuracy,
                "alloynet_recall": nom.ceiling_recall,
                "second_rig_recall": sec.ceiling_recall,
                "d_unknown_5083_6082": [
                    next(p.d_unknown for p in r.pairs if {p.a, p.b} == {"Al5083", "Al6082"}) for r in (nom, sec)
                ],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            out.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| wedge | thickness prior | ceiling, alloynet simulator | ceiling, second rig "
        "| d' 5083/6082 (t unknown) alloynet / second |"
    )
    print("|---|---|---|---|---|")
    for r in out:
        print(
            f"| {r['wedge_mm']:.0f} mm | {r['prior']} | {r['alloynet']:.3f} | {r['second_rig']:.3f} | "
            f"{r['d_unknown_5083_6082'][0]:.2f} / {r['d_unknown_5083_6082'][1]:.2f} |"
        )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["speed", "differences", "ceilings"])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--captures", type=int, default=40)
    p.add_argument("--plates", type=int, default=200)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    {"speed": speed, "differences": differences, "ceilings": ceilings}[a.what](a)


if __name__ == "__main__":
    main()
