"""`alloynet import` throughput: an ImageFolder tree of small 16-bit TIFFs into a local capture store, one core.

    .venv/bin/python bench/import_captures.py [--n 5000] [--size 64]

Writes N HxW 16-bit TIFFs (five alloy folders under train/ and test/, a session dark and flat at the root)
into a temp dir, then times the real command line (`alloynet import ... --kvp 50 --wedge-mm 50
--thickness-mm 2`, manifest refresh included) twice as a subprocess under OMP_NUM_THREADS=1 and
`taskset -c 0` when available: the first run imports everything, the second finds it all already present.
Target: the first run under 60 s for 5,000 64x64 captures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Al1050", "Al2017", "Al5083", "Al6082", "Al7075")


def make_tree(root: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        split = "test" if i % 5 == 0 else "train"
        d = root / split / CLASSES[i % len(CLASSES)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(2000, 45000, (size, size)).astype(np.uint16)).save(d / f"cap{i:05d}.tif")
    Image.fromarray(np.full((size, size), 1000, np.uint16)).save(root / "dark.tif")
    Image.fromarray(np.full((size, size), 50000, np.uint16)).save(root / "flat.tif")


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"import failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return dt, res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "alloynet")
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    tmp = Path(tempfile.mkdtemp(prefix="alloynet-bench-import-"))
    try:
        t0 = time.perf_counter()
        make_tree(tmp / "lab", args.n, args.size)
        print(f"wrote {args.n} {args.size}x{args.size} 16-bit TIFFs in {time.perf_counter() - t0:.1f} s")
        cmd = [
            *pin,
            exe,
            "import",
            str(tmp / "lab"),
            str(tmp / "store"),
            "--kvp",
            "50",
            "--wedge-mm",
            "50",
            "--thickness-mm",
            "2",
        ]
        shown = [*pin, "alloynet", "import", "LAB", "STORE", *cmd[len(pin) + 4 :]]
        print("command: OMP_NUM_THREADS=1", " ".join(shown))
        first, out = timed(cmd)
        summary = next(ln for ln in out.splitlines() if ln.startswith("import: "))
        print(f"first run:  {first:6.1f} s  {args.n / first:7.0f} captures/s  ({summary})")
        second, out = timed(cmd)
        summary = next(ln for ln in out.splitlines() if ln.startswith("import: "))
        print(f"re-run:     {second:6.1f} s  {args.n / second:7.0f} files/s     ({summary})")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, pinned: {bool(pin)}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
