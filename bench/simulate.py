"""Simulator throughput at 256x256 on one core.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/simulate.py [--n 200] [--size 256]

Prints captures/s for: the column-wise simulator (array only), the same plus 16-bit PNG encoding and the
sidecar (what `alloynet simulate` does per capture), and a straightforward per-pixel energy sum for
comparison (the approach the column-wise design replaces).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from alloynet.captures.image import encode_image  # noqa: E402
from alloynet.physics import RigConfig, RigSimulator, sample_plate  # noqa: E402
from alloynet.physics.materials import linear_attenuation  # noqa: E402


def per_pixel_energy_sum(sim: RigSimulator, plate, rng: np.random.Generator) -> np.ndarray:
    """Baseline: the energy integral evaluated at every pixel (H x W x E), then the same noise chain."""
    ch = sim.channels[0]
    dt_cm, _ = sim._thickness_field(plate, rng)
    mu = linear_attenuation(plate.fractions(), plate.density_g_cm3, ch.energies)
    t = plate.thickness_mm / 10.0 + dt_cm
    n = ch.n_behind_wedge[None, :, :] * np.exp(-mu[None, None, :] * t[:, :, None])  # [H, W, E]
    m, v = n @ ch.energies, n @ ch.energies**2
    kev = rng.poisson(m * m / v) * (v / m)
    adu = sim.rig.dark_offset_adu + ch.gain * sim.prnu * kev + sim.rig.read_noise_adu * rng.standard_normal(kev.shape)
    return sim._quantise(adu)


def rate(fn, n: int) -> float:
    fn()  # warm caches (spectrum, attenuation tables)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sim = RigSimulator(RigConfig(height=a.size, width=a.size))
    rng = np.random.default_rng(0)
    plate = sample_plate("Al6082", 2.0, rng, "bench")
    print(f"{platform.processor() or platform.machine()}, 1 core, {a.size}x{a.size}, {a.n} captures")
    r_sim = rate(lambda: sim.capture(plate, rng), a.n)
    r_png = rate(lambda: encode_image(sim.capture(plate, rng).image), a.n)
    r_naive = rate(lambda: per_pixel_energy_sum(sim, plate, rng), max(10, a.n // 10))
    print(f"column-wise simulator:            {r_sim:7.1f} captures/s")
    print(f"column-wise + 16-bit PNG encode:  {r_png:7.1f} captures/s")
    print(f"per-pixel energy sum (baseline):  {r_naive:7.1f} captures/s")
    print(f"speed-up over baseline:           {r_sim / r_naive:7.1f} x")


if __name__ == "__main__":
    main()
