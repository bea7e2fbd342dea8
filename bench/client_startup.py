"""How long `alloynet infer` takes before it sends its first capture: imports, decoding one 16-bit PNG, the
gRPC request built and sent.

    .venv/bin/python bench/client_startup.py [--repeat 7] [--baseline OTHER_CHECKOUT]

Three steps, each timed as the median of --repeat fresh processes (a new interpreter every time, so nothing is
cached in memory but the OS page cache, as for a user typing the command):
* ``import client``: ``python -c "import serving.client"``;
* ``import + decode``: the client imported and one capture decoded with the library's decoder;
* ``alloynet infer``: the whole command against a port where nothing listens (``--retry-budget 0``), so it
  ends right after its first request is sent and refused: start-up + connect + send, no server time. The
  client's first request asks for the model's config (it checks a capture's size against it before decoding),
  so this run reads the capture but does not decode it: the decode is the difference between the first two
  rows.
Also the least wall time (what the machine does when nothing else gets in the way: on a shared machine the
median moves with the load), the median CPU time (user + system, every thread) and the number of
modules each imports (``sys.modules``), which is what makes start-up slow. One untimed run comes first.
With ``--baseline`` another checkout's ``alloynet infer`` is timed too, run by run in turn with this one's, so a
before/after comparison sees the same load.

Every process runs this checkout's code: ``python -m alloynet.cli infer ...`` (the ``alloynet`` script
next to the interpreter runs whatever checkout the virtual environment was installed from) and ``python -c``,
both with the repository root as working directory, which Python puts first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ALLOYNET = [PY, "-m", "alloynet.cli"]  # this checkout's CLI, as the `alloynet` script runs it (main())


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


def run_once(cmd: list[str], cwd: Path, rc: int) -> tuple[float, float]:
    """Wall and CPU time (user + system, all threads) of one run of ``cmd``, which must end with exit status
    ``rc`` (a broken one would look fast)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # any value: no .pyc written
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != rc:
        sys.exit(
            f"{' '.join(cmd)} in {cwd}: exit status {res.returncode}, expected {rc}\n{res.stderr.decode()[-2000:]}"
        )
    return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def timed(cmd: list[str], repeat: int, rc: int, roots: Sequence[Path] = (ROOT,)) -> list[tuple[float, float, float]]:
    """Per checkout in ``roots``: median and least wall time and median CPU time of ``cmd`` run there ``repeat``
    times, after one untimed run (which writes any missing .pyc, as a user's first run does). With several
    checkouts the runs take turns, so that each sees the same load."""
    for root in roots:
        run_once(cmd, root, rc)
    runs: list[list[tuple[float, float]]] = [[] for _ in roots]
    for _ in range(repeat):
        for i, root in enumerate(roots):
            runs[i].append(run_once(cmd, root, rc))
    return [
        (statistics.median(w for w, _ in r), min(w for w, _ in r), statistics.median(c for _, c in r)) for r in runs
    ]


def modules(code: str) -> int:
    out = subprocess.run(
        [PY, "-c", code + "\nimport sys; print(len(sys.modules))"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add --detach /tmp/base "
        "HEAD~1`): its `alloynet infer` timed too, taking turns with this one",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        png = capture_png(Path(d) / "capture.png")
        imp = "import serving.client"
        dec = f"import serving.client.captures as c; c.decode(open({str(png)!r}, 'rb').read())"
        infer = ["infer", str(png), "--url", f"triton://127.0.0.1:{closed_port()}/alloynet", "--retry-budget", "0"]
        run_cli = (
            f"import runpy, sys; sys.argv = ['alloynet', *{infer!r}]\n"
            "try: runpy.run_module('alloynet.cli', run_name='__main__')\nexcept SystemExit: pass"
        )
        rows = [
            ("import client", [PY, "-c", imp], modules(imp), 0),
            ("import + decode", [PY, "-c", dec], modules(dec), 0),
            ("alloynet infer (refused)", [*ALLOYNET, *infer], modules(run_cli), 2),
        ]  # 2: server unreachable
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        )
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("| step | median s | min s | median CPU s | modules |")
        print("|---|---|---|---|---|")
        for name, cmd, n, rc in rows:
            ((wall, least, cpu),) = timed(cmd, args.repeat, rc)
            print(f"| {name} | {wall:.3f} | {least:.3f} | {cpu:.3f} | {n} |")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.baseline:
            roots = (ROOT, args.baseline.resolve())
            print(f"\n`alloynet infer` (refused), the two checkouts taking turns, {args.repeat} runs each:")
            print("| checkout | median s | min s | median CPU s |")
            print("|---|---|---|---|")
            for root, (wall, least, cpu) in zip(roots, timed([*ALLOYNET, *infer], args.repeat, 2, roots)):
                print(f"| {root} | {wall:.3f} | {least:.3f} | {cpu:.3f} |")
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
