"""The line's loop, measured.

    .venv/bin/python bench/line_month.py record-cost [--n 20000] [--rounds 5]
    .venv/bin/python bench/line_month.py kill [--n 3000] [--kills 5]
    .venv/bin/python bench/line_month.py month [--days 30] [--drift-day 12] [--seeds 3] [--per-day 40] ...

``record-cost``: what recording costs a request: the client facade (``AlloyClient.predict``) over a backend
that answers at once with a prepared answer, recording off vs on (a real capture file: identity and hash are
worked out by the recorder's thread), interleaved rounds; p50/p99 per request and their difference.
``kill``: a child process predicts and records and prints each answered request's index; it is killed with
SIGKILL at a random moment; how many answered requests have no record (the records still queued when it
died), per kill.
``month``: see ``month`` below.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), {datetime.now(timezone.utc):%Y-%m-%d}"


class InstantBackend:
    """A server that answers at once: what is left of a request's time is the client's own work."""

    server, model, target, version = "triton", "alloynet", "127.0.0.1:0", "1"

    def __init__(self):
        from serving.client.prediction import Prediction

        self.answer = Prediction(alloy="Al6082", confidence=0.8, probabilities={"Al6082": 0.8, "Al5083": 0.2},
                                 prediction_set=["Al6082"], group="light", group_probability=0.99, thickness_mm=5.0,
                                 absorption={"a0": 1.0, "mu_eff": 2.0}, flags=[], server="triton")

    def predict_batch(self, captures, calibrations=None, wedges_mm=None, errors="raise"):
        return [self.answer for _ in captures]

    def close(self):
        pass


def _capture_file(d: Path) -> Path:
    """A 64x64 16-bit PNG and its sidecar's capture_id, as the line would send it."""
    from alloynet.captures.image import encode_image

    rng = np.random.default_rng(0)
    p = d / "cap-0001.png"
    p.write_bytes(encode_image(rng.integers(1000, 60000, size=(1, 64, 64), dtype=np.uint16))[0])
    (d / "cap-0001.json").write_text(json.dumps({"capture_id": "cap-0001"}))
    return p


def _timed(client, capture, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.predict(capture)
        out.append(time.perf_counter() - t0)
    return out


def record_cost(args) -> None:
    from serving.client.facade import AlloyClient
    from serving.client.record import Recorder

    with tempfile.TemporaryDirectory() as tmp:
        cap = _capture_file(Path(tmp))
        off, on = [], []
        for _ in range(args.rounds):
            off += _timed(AlloyClient(InstantBackend()), cap, args.n)
            rec = Recorder(Path(tmp) / "store")
            client = AlloyClient(InstantBackend(), rec)
            on += _timed(client, cap, args.n)
            client.close()
        written, dropped = rec.written, rec.dropped
    p = lambda xs, q: 1e3 * float(np.quantile(xs, q))  # noqa: E731
    print(f"# {machine()}; {args.rounds} rounds x {args.n} requests each way, one capture per request")
    print("| recording | p50 ms | p99 ms |\n|---|---|---|")
    print(f"| off | {p(off, .5):.4f} | {p(off, .99):.4f} |\n| on | {p(on, .5):.4f} | {p(on, .99):.4f} |")
    print(f"recording cost at p50: {p(on, .5) - p(off, .5):.4f} ms, at p99: {p(on, .99) - p(off, .99):.4f} ms; "
          f"last round: {written} written, {dropped} dropped")


def _child(store: str, n: int) -> None:
    from serving.client.facade import AlloyClient
    from serving.client.record import Recorder

    cap = _capture_file(Path(tempfile.mkdtemp()))
    client = AlloyClient(InstantBackend(), Recorder(store))
    for i in range(n):
        client.predict(cap)
        sys.stdout.write(f"{i}\n")
        sys.stdout.flush()
        time.sleep(0.0005)
    client.close()


def kill(args) -> None:
    from alloynet.monitor.record import read_records

    rng = np.random.default_rng(args.seed)
    print(f"# {machine()}; {args.kills} kills of a recording client (SIGKILL at a random moment)")
    print("| kill | answered | recorded | answered without a record |\n|---|---|---|---|")
    for k in range(args.kills):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.Popen([sys.executable, __file__, "_child", tmp, str(args.n)], stdout=subprocess.PIPE,
                                    text=True, cwd=ROOT)
            answered, deadline = -1, time.monotonic() + 60
            stop_after = int(rng.integers(args.n // 4, args.n // 2))
            assert proc.stdout is not None
            for line in proc.stdout:
                answered = int(line)
                if answered >= stop_after or time.monotonic() > deadline:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            proc.wait()
            n_rec = len(read_records(tmp, datetime.now(timezone.utc) - timedelta(hours=1)).records)
            print(f"| {k + 1} | {answered + 1} | {n_rec} | {max(0, answered + 1 - n_rec)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    rc = sub.add_parser("record-cost")
    rc.add_argument("--n", type=int, default=20000)
    rc.add_argument("--rounds", type=int, default=5)
    kl = sub.add_parser("kill")
    kl.add_argument("--n", type=int, default=3000)
    kl.add_argument("--kills", type=int, default=5)
    kl.add_argument("--seed", type=int, default=0)
    ch = sub.add_parser("_child")
    ch.add_argument("store")
    ch.add_argument("n", type=int)
    args = ap.parse_args()
    if args.what == "_child":
        _child(args.store, args.n)
    else:
        {"record-cost": record_cost, "kill": kill}[args.what](args)


if __name__ == "__main__":
    main()
