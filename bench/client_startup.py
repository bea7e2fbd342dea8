"""How long `alloynet infer` takes before it sends its first capture: imports, decoding one 16-bit PNG, the
gRPC request built and sent.

    .venv/bin/python bench/client_startup.py [--repeat 7]

Three figures, each the median of --repeat fresh processes (a new interpreter every time, so nothing is
cached in memory but the OS page cache, as for a user typing the command):
* ``import client``: ``python -c "import serving.client"``;
* ``import + decode``: the client imported and one capture decoded with the library's decoder;
* ``alloynet infer``: the whole command against a port where nothing listens (``--retry-budget 0``), so it
  ends right after the request is sent and refused: start-up + decode + send, no server time.
Also the number of modules each imports (``sys.modules``), which is what makes start-up slow.
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ALLOYNET = str(Path(PY).parent / "alloynet")


def capture_png(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    img = (np.random.default_rng(0).integers(1000, 50000, (64, 64))).astype(np.uint16)
    Image.fromarray(img).save(path)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


def timed(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "0"})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def modules(code: str) -> int:
    out = subprocess.run([PY, "-c", code + "; import sys; print(len(sys.modules))"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        png = capture_png(Path(d) / "capture.png")
        imp = "import serving.client"
        dec = (f"import serving.client as c; c._decode(open({str(png)!r}, 'rb').read())")
        rows = [("import client", [PY, "-c", imp], modules(imp)),
                ("import + decode", [PY, "-c", dec], modules(dec)),
                ("alloynet infer (refused)", [ALLOYNET, "infer", str(png), "--url",
                                              f"triton://127.0.0.1:{closed_port()}/alloynet", "--retry-budget", "0"], None)]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}")
        print("| step | median s | modules |")
        print("|---|---|---|")
        for name, cmd, n in rows:
            print(f"| {name} | {timed(cmd, args.repeat):.3f} | {n if n is not None else '-'} |")


if __name__ == "__main__":
    main()
