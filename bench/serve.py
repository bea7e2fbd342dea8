"""Serving benchmarks: latency/throughput, and what `alloynet serve` does under load when things change.

    .venv/bin/python bench/serve.py latency [--n 300] [--concurrency 8] [--queue-delay-us 0]
    .venv/bin/python bench/serve.py resilience [--clients 4] [--oversized-mb 400] [--bursts 8]
    .venv/bin/python bench/serve.py guard-cost [--rounds 40]     # latency with/without Triton's memory settings

``latency``: in-process PyTorch and ONNX Runtime vs TorchServe and Triton over gRPC (alloynet's client: over
its kept stream, its default, and with a unary call per request), same model (a
profile_cnn trained one epoch by alloynet at 64x64 unless --checkpoint is given), same captures, each sent
with its calibration and wedge size, one intra-op thread per model instance. "b1": one request at a time. "dyn":
--concurrency client threads sending single captures (servers batch them; the in-process rows run
batches of that size). Prints p50/p99 latency, throughput, ratios to in-process ONNX Runtime, and
Triton's overhead over in-process ONNX Runtime at p50, batch 1.

``resilience``: two versions published to a throwaway registry and served by `alloynet serve` (Triton +
TorchServe, free ports), with --clients client threads per server sending one capture in a loop
each at most --rate requests a second (default client: 30 s retry budget):
* swap under load: promote v2, then roll back; failed requests, and p99 latency inside the swap window
  (from the pointer move until the new version answers) against the steady state;
* crash under load: kill -9 of Triton, then of TorchServe's frontend; seconds until the server is back,
  until the first answer to a request sent after the kill, the longest time without any answer, failed
  requests;
* memory after a burst of oversized requests: Triton RSS before/after --bursts refused requests of
  --oversized-mb each (and the same against a Triton with its own defaults); TorchServe worker RSS
  before/after --bursts PNGs declaring 10000 x 10000 px (~200 KB each; beside it, what decoding one costs
  without the header check) and frontend RSS before/after --bursts requests of --oversized-mb.
Needs infra/serving_env.sh for Triton.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared; load average "
        f"{load[0]:.1f} at the end), torch {torch.__version__}"
    )


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


# -- latency ----------------------------------------------------------------------------------------------


def measure(fn, items, concurrency: int = 1, warmup: int = 10) -> dict:
    """Latency per call (ms) and throughput (captures/s) of fn(item) over items."""
    for it in items[:warmup]:
        fn(it)
    lat: list[float] = []
    lock = threading.Lock()
    chunks = [items[i::concurrency] for i in range(concurrency)]

    def worker(chunk):
        mine = []
        for it in chunk:
            t0 = time.perf_counter()
            fn(it)
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n_caps = sum(len(it[0]) if isinstance(it, tuple) else 1 for it in items)
    return {"p50": statistics.median(lat), "p99": pct(lat, 0.99), "throughput": n_caps / wall}


def latency(args, tmp: Path) -> None:
    from alloynet.export import export_checkpoint, onnx_session
    from alloynet.models.checkpoint import load_model
    from infra import torchserve as ts_server
    from infra import triton as tr_server
    from serving.client import connect
    from serving.torchserve.archive import build_mar
    from serving.triton.repository import BatchingOptions, build_repository
    from tests.helpers.serving import capture_inputs, train_tiny_checkpoint

    ckpt = args.checkpoint or train_tiny_checkpoint(tmp)
    bundle = export_checkpoint(ckpt, tmp / "export", log=lambda *_: None)
    model, _ = load_model(ckpt)
    x = capture_inputs(64, seed=11)
    f32, cals, wedges = x["image"].astype(np.float32), x["calibration"], x["wedge_mm"]
    singles = [(f32[i % 64][None], cals[i % 64][None], wedges[i % 64][None]) for i in range(args.n)]
    c = args.concurrency
    batches = [
        tuple(np.concatenate([singles[(i + j) % args.n][k] for j in range(c)]) for k in range(3))
        for i in range(0, args.n, c)
    ]
    rows: dict[str, dict] = {}

    with torch.inference_mode():
        run_pt = lambda xc: model(*(torch.from_numpy(t) for t in xc))  # noqa: E731
        rows["PyTorch in-process (eager)"] = {"b1": measure(run_pt, singles), "dyn": measure(run_pt, batches)}
    sess = onnx_session(bundle.path("onnx"), threads=1)
    run = lambda xc: sess.run(None, {"image": xc[0], "calibration": xc[1], "wedge_mm": xc[2]})  # noqa: E731
    rows["ONNX Runtime in-process"] = {"b1": measure(run, singles), "dyn": measure(run, batches)}

    store = tmp / "store"
    build_mar(bundle.directory, store, batch_size=c, max_batch_delay_ms=2, threads=1)
    ts = ts_server.start(store, ["alloynet.mar"], tmp / "ts", timeout=180)
    try:
        with connect(f"torchserve://{ts.grpc_target}", token=ts.inference_key) as cl:
            send = lambda xc: cl.predict(xc[0][0], xc[1][0], float(xc[2][0, 0]))  # noqa: E731
            rows["TorchServe gRPC"] = {"b1": measure(send, singles), "dyn": measure(send, singles, concurrency=c)}
    finally:
        ts_server.stop(tmp / "ts")

    repo = build_repository(
        bundle.directory, tmp / "repo", opts=BatchingOptions(max_batch_size=32, max_queue_delay_us=args.queue_delay_us)
    )
    tr = tr_server.start(repo, tmp / "triton", models=["alloynet"])
    try:
        url = f"triton://{tr.grpc_target}/alloynet"
        with connect(url) as cl, connect(url, stream=False) as cu:
            cl.predict(f32[0])  # fetch the model's config once
            cu.predict(f32[0])
            send = lambda xc: cl.backend.infer_array(*xc)  # noqa: E731
            unary = lambda xc: cu.backend.infer_array(*xc)  # noqa: E731
            name = f"Triton gRPC, the client's kept stream (alloynet's backend; queue delay {args.queue_delay_us} us)"
            uname = "Triton gRPC, a unary call each (stream=False)"
            rows[name] = {"b1": measure(send, singles), "dyn": measure(send, singles, concurrency=c)}
            rows[uname] = {"b1": measure(unary, singles), "dyn": measure(unary, singles, concurrency=c)}
            # The overhead again, interleaved: blocks of 30 in-process calls, 30 Triton calls over the stream and
            # 30 unary ones in turn, so all see the same load on a shared machine (the table's rows are measured
            # minutes apart).
            lat = {"ort": [], "triton": [], "unary": []}
            for r in range(args.rounds):
                for key, fn in (("ort", run), ("triton", send), ("unary", unary)):
                    for i in range(30):
                        t0 = time.perf_counter()
                        fn(singles[(r * 30 + i) % len(singles)])
                        lat[key].append((time.perf_counter() - t0) * 1e3)
    finally:
        tr_server.stop(tmp / "triton")

    ref = rows["ONNX Runtime in-process"]
    print(f"# {machine()}; n={args.n}, concurrency={c}, 64x64 captures + calibration + wedge_mm, {bundle.meta.arch}")
    print(
        "| path | b1 p50 ms | b1 p99 ms | b1 cap/s | dyn p50 ms | dyn p99 ms | dyn cap/s | b1 p50 / ORT | "
        "dyn cap/s / ORT |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        b, d = r["b1"], r["dyn"]
        print(
            f"| {n} | {b['p50']:.2f} | {b['p99']:.2f} | {b['throughput']:.0f} | {d['p50']:.2f} | "
            f"{d['p99']:.2f} | {d['throughput']:.0f} | {b['p50'] / ref['b1']['p50']:.1f}x | "
            f"{d['throughput'] / ref['dyn']['throughput']:.2f}x |"
        )
    over = rows[name]["b1"]["p50"] - ref["b1"]["p50"]
    med = {k: statistics.median(v) for k, v in lat.items()}
    inter, inter_unary = med["triton"] - med["ort"], med["unary"] - med["ort"]
    print(
        f"\nTriton serving overhead at p50, batch 1, over in-process ONNX Runtime: {over:.2f} ms from the table; "
        f"{inter:.2f} ms interleaved ({args.rounds} x 30 calls each; ORT p50 {med['ort']:.2f} ms, Triton p50 "
        f"{med['triton']:.2f} ms over the client's stream; unary calls {med['unary']:.2f} ms, overhead "
        f"{inter_unary:.2f} ms). Goal <= 1.5 ms: {'met' if inter <= 1.5 else 'NOT met'} (interleaved figure, "
        f"the client's default)"
    )


# -- resilience -------------------------------------------------------------------------------------------


def bomb_png(side: int = 10000) -> bytes:
    """A valid 16-bit grayscale PNG of side x side px, ~200 KB: the first row a ramp, every other row PNG filter
    "Up" with zero differences (so the image is the ramp repeated, real pixels to decode: 2*side^2 bytes)."""
    first = b"\x00" + np.arange(side, dtype=">u2").tobytes()
    up = b"\x02" + bytes(2 * side)
    z = zlib.compressobj(9)
    raw = z.compress(first) + b"".join(z.compress(up) for _ in range(side - 1)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


class Load:
    """--clients threads per server, each sending one capture at most --rate times a second (an inspection line
    paces its captures; unpaced loops would only measure two cores starved by eight busy clients). Every request
    is logged: (start, end, ok, which version answered)."""

    def __init__(
        self, urls: dict[str, str], clients: int, rate: float, key_file: Path, image, calibration, wedge_mm: float, refs
    ):
        self.urls, self.clients, self.period, self.key_file = urls, clients, 1.0 / rate, key_file
        self.image, self.calibration, self.wedge_mm, self.refs = image, calibration, wedge_mm, refs
        self.log: dict[str, list[tuple[float, float, bool, str]]] = {n: [] for n in urls}
        self.errors: dict[str, list[tuple[float, str]]] = {n: [] for n in urls}
        self.stop, self.lock = threading.Event(), threading.Lock()

    def who(self, p) -> str:
        from alloynet.physics import ALLOY_NAMES

        got = np.array([p.probabilities[c] for c in ALLOY_NAMES])
        return next((v for v, ref in self.refs.items() if np.allclose(got, ref, atol=1e-4)), "?")

    def run(self, name: str) -> None:
        from serving.client import connect

        with connect(self.urls[name], key_file=self.key_file) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                next_at += self.period
                t0 = time.monotonic()
                try:
                    ok, version = True, self.who(client.predict(self.image, self.calibration, self.wedge_mm))
                except Exception as exc:
                    ok, version = False, ""
                    with self.lock:
                        self.errors[name].append((t0, repr(exc)[:300]))
                with self.lock:
                    self.log[name].append((t0, time.monotonic(), ok, version))
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def requests(self, name: str, t0: float, t1: float) -> list[tuple[float, float, bool, str]]:
        """Requests that overlap [t0, t1]."""
        with self.lock:
            return [r for r in self.log[name] if r[1] >= t0 and r[0] <= t1]

    def latencies(self, name: str, t0: float, t1: float) -> list[float]:
        return [(e - s) * 1e3 for s, e, ok, _ in self.requests(name, t0, t1) if ok]

    def failed(self, name: str, t0: float = 0.0, t1: float = float("inf")) -> int:
        with self.lock:
            return sum(1 for t, _ in self.errors[name] if t0 <= t <= t1)

    def first(self, name: str, after: float, version: str | None = None) -> float:
        """Seconds from ``after`` to the first answer (from ``version``) to a request sent after it."""
        with self.lock:
            ends = [e for s, e, ok, v in self.log[name] if ok and s >= after and (version is None or v == version)]
        return min(ends) - after if ends else float("nan")

    def longest_silence(self, name: str, t0: float, t1: float) -> float:
        """The longest time without any answer between t0 and t1 (s)."""
        with self.lock:
            ends = sorted(e for s, e, ok, _ in self.log[name] if ok and t0 <= e <= t1)
        marks = [t0, *ends, t1]
        return max(b - a for a, b in zip(marks, marks[1:]))

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self.run, args=(n,), daemon=True) for n in self.urls for _ in range(self.clients)
        ]
        for t in self.threads:
            t.start()
        time.sleep(3)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def oversized(target: str, pid: int, mb: int, bursts: int) -> tuple[float, float, float]:
    """RSS of Triton (pid) before, at the sampled peak and 2 s after ``bursts`` refused requests of ``mb`` MB."""
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    raw = g.InferenceServerClient(target)
    before, peak = rss_mb(pid), 0.0
    for _ in range(bursts):
        inp = g.InferInput("image", [1, 1, 64, 64], "FP32")
        inp._raw_content = bytes(mb << 20)  # its size does not match its shape: refused by Triton
        inp._input.ClearField("contents")
        try:
            raw.infer("alloynet", [inp], client_timeout=300)
        except InferenceServerException:
            pass
        del inp
        peak = max(peak, rss_mb(pid))
    raw.close()
    time.sleep(2)
    return before, peak, rss_mb(pid)


def decode_cost_mb(png: bytes) -> float:
    """Peak RSS growth of decoding ``png`` with the library's decoder, no header check (a fresh process)."""
    import subprocess

    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); from alloynet.captures.image import decode_image\n"
        "kb = lambda k: int(next(l for l in open('/proc/self/status') if l.startswith(k)).split()[1])\n"
        "data = sys.stdin.buffer.read(); r0 = kb('VmRSS'); decode_image(data); print((kb('VmHWM') - r0) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], input=png, capture_output=True, check=True)
    return float(out.stdout.decode().strip().splitlines()[-1])


def resilience(args, tmp: Path) -> None:
    import psutil

    from alloynet.export import export_checkpoint, onnx_session
    from alloynet.registry import open_registry
    from infra import serve, triton
    from infra.processes import free_port
    from serving.client import connect
    from serving.torchserve.archive import build_mar
    from serving.triton.repository import build_repository
    from tests.helpers.serving import capture_inputs, train_tiny_checkpoint

    x = capture_inputs(1, seed=3)
    image, calibration, wedge_mm = x["image"][0], x["calibration"][0], float(x["wedge_mm"][0, 0])
    reg, refs = open_registry(tmp / "registry"), {}
    for seed in (0, 1):
        b = export_checkpoint(
            train_tiny_checkpoint(tmp / f"m{seed}", seed=seed),
            tmp / f"m{seed}" / "export",
            n_parity=4,
            log=lambda *_: None,
        )
        rel = tmp / f"release{seed}"
        build_repository(b.directory, rel / "triton")
        build_mar(b.directory, rel / "torchserve")
        version = reg.publish(rel, metrics={}).version
        refs[version] = onnx_session(b.path("onnx")).run(
            ["probabilities"],
            {
                "image": image[None].astype(np.float32),
                "calibration": calibration[None],
                "wedge_mm": np.array([[wedge_mm]], np.float32),
            },
        )[0][0]
    reg.promote("v0001", "bench")
    cfg = serve.ServeConfig(
        registry=str(tmp / "registry"),
        torchserve=True,
        poll_s=1.0,
        triton_grpc_port=free_port(),
        torchserve_grpc_port=free_port(),
        torchserve_http_port=free_port(),
        torchserve_grpc_management_port=free_port(),
        torchserve_metrics_port=free_port(),
    )
    state_dir = tmp / "serve"
    t0 = time.monotonic()
    serve.start(cfg, state_dir)
    started = time.monotonic() - t0
    urls = cfg.urls()
    key_file = state_dir / "torchserve" / "key_file.json"
    rows = []
    try:
        with Load(urls, args.clients, args.rate, key_file, image, calibration, wedge_mm, refs) as load:
            steady0 = time.monotonic()
            time.sleep(10)
            steady = {n: load.latencies(n, steady0, time.monotonic()) for n in urls}
            for n in urls:
                rows.append(
                    (
                        "steady",
                        f"{n}: {args.clients} clients x {args.rate:g}/s, 10 s",
                        f"p50 {pct(steady[n], 0.5):.1f} ms, p99 {pct(steady[n], 0.99):.1f} ms",
                        f"{load.failed(n, steady0)} failed of {len(steady[n])}",
                    )
                )
            for what, act, new in (
                ("promotion v0001 -> v0002", lambda: reg.promote("v0002", "bench"), "v0002"),
                ("rollback v0002 -> v0001", lambda: reg.rollback("bench"), "v0001"),
            ):
                t_move = time.monotonic()
                gen = act().generation
                while (
                    not serve.caught_up(serve.read_state(state_dir))
                    or (serve.read_state(state_dir).get("champion") or {}).get("generation") != gen
                ):
                    time.sleep(0.1)
                t_done = time.monotonic()
                time.sleep(3)
                timings = serve.read_state(state_dir).get("last_swap") or {}
                for n in urls:
                    w = load.latencies(n, t_move, t_done)
                    rows.append(
                        (
                            "swap",
                            f"{what} ({n}; its load took {timings.get(f'{n}_s', float('nan')):.1f} s)",
                            f"first answer from {new} {load.first(n, t_move, new):.1f} s after the pointer moved "
                            f"(poll 1 s); {load.failed(n, t_move, t_done)} failed of {len(w)}",
                            f"p99 {pct(w, 0.99):.1f} ms during the swap vs {pct(steady[n], 0.99):.1f} ms steady",
                        )
                    )
            for name in ("triton", "torchserve"):
                pid = serve.read_state(state_dir)["servers"][name]["pid"]
                victim = (
                    pid
                    if name == "triton"
                    else next(c.pid for c in psutil.Process(pid).children(recursive=True) if "java" in c.name())
                )
                t_kill = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                while serve.read_state(state_dir)["servers"][name]["pid"] == pid:
                    time.sleep(0.1)
                t_back = time.monotonic()
                deadline = t_back + 60
                while not load.requests(name, t_back, time.monotonic()) and time.monotonic() < deadline:
                    time.sleep(0.1)
                while time.monotonic() < deadline and not any(
                    ok and s >= t_kill for s, _, ok, _ in load.requests(name, t_kill, time.monotonic())
                ):
                    time.sleep(0.1)
                time.sleep(2)
                rows.append(
                    (
                        "crash",
                        f"kill -9 {'tritonserver' if name == 'triton' else 'TorchServe java frontend'}",
                        f"back (ready) on the same port {t_back - t_kill:.1f} s after the kill; first answer "
                        f"{load.first(name, t_kill):.1f} s after it; longest silence "
                        f"{load.longest_silence(name, t_kill - 1, time.monotonic()):.1f} s",
                        f"{load.failed(name, t_kill - 1, time.monotonic())} failed requests",
                    )
                )
        failed = {n: load.failed(n) for n in urls}
        total = {n: len(load.log[n]) for n in urls}

        # memory after bursts of oversized requests
        st = serve.read_state(state_dir)
        before, peak, after = oversized(
            st["servers"]["triton"]["grpc"], st["servers"]["triton"]["pid"], args.oversized_mb, args.bursts
        )
        rows.append(
            (
                "memory",
                f"Triton, {args.bursts} refused requests of {args.oversized_mb} MB",
                f"RSS {before:.0f} MiB before, sampled peak {peak:.0f}",
                f"{after:.0f} MiB after",
            )
        )
        ts_pid = st["servers"]["torchserve"]["pid"]
        procs = psutil.Process(ts_pid).children(recursive=True)
        java = next(c for c in procs if "java" in c.name())
        worker = next(c for c in procs if "model_service_worker" in " ".join(c.cmdline()))
        wb, jb = worker.memory_info().rss / 2**20, java.memory_info().rss / 2**20
        bomb = bomb_png()
        with connect(urls["torchserve"], key_file=key_file) as client:
            for _ in range(args.bursts):
                try:
                    client.predict(bomb)
                except Exception:
                    pass
            rows.append(
                (
                    "memory",
                    f"TorchServe worker, {args.bursts} PNGs of {len(bomb) // 1024} KB declaring 10000x10000 px",
                    f"RSS {wb:.0f} MiB before",
                    f"{worker.memory_info().rss / 2**20:.0f} MiB after (decoding one without the header check: "
                    f"+{decode_cost_mb(bomb):.0f} MiB peak)",
                )
            )
            big = np.zeros((args.oversized_mb << 20) // 4, np.float32)
            for _ in range(args.bursts):
                try:
                    client.predict(big)
                except Exception:
                    pass
            time.sleep(2)
            rows.append(
                (
                    "memory",
                    f"TorchServe frontend (java), {args.bursts} requests of {args.oversized_mb} MB "
                    f"(limit {cfg.max_request_bytes >> 20} MB)",
                    f"RSS {jb:.0f} MiB before",
                    f"{java.memory_info().rss / 2**20:.0f} MiB after",
                )
            )
    finally:
        serve.stop(state_dir)
    # the same burst against a Triton with its own defaults (request-object pool, glibc's malloc)
    plain = triton.start(state_dir / "triton" / "repository", tmp / "plain-triton", memory_guard=False)
    try:
        before, peak, after = oversized(plain.grpc_target, plain.pid, args.oversized_mb, args.bursts)
        rows.append(
            (
                "memory",
                "Triton with its defaults (no --grpc-infer-allocation-pool-size=0, glibc defaults), same burst",
                f"RSS {before:.0f} MiB before, sampled peak {peak:.0f}",
                f"{after:.0f} MiB after",
            )
        )
    finally:
        triton.stop(tmp / "plain-triton")
    print(
        f"# {machine()}; alloynet serve (Triton + TorchServe) started in {started:.1f} s; "
        f"{args.clients} client threads per server, each at most {args.rate:g} requests/s, default client (30 s "
        "retry budget, 10 s timeout)"
    )
    print("requests: " + ", ".join(f"{n} {total[n]} sent, {failed[n]} failed" for n in urls))
    for n in urls:
        for _, e in load.errors[n][:3]:
            print(f"  {n} error: {e}")
    print("| scenario | what | figure | figure |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def guard_cost(args, tmp: Path) -> None:
    """Does the memory guard cost latency? Four Tritons on one repository (the guard's two parts on and off),
    interleaved blocks of 25 single-capture calls each, --rounds rounds."""
    from alloynet.export import export_checkpoint
    from infra import triton
    from serving.client import connect
    from serving.triton.repository import build_repository
    from tests.helpers.serving import capture_inputs, train_tiny_checkpoint

    bundle = export_checkpoint(train_tiny_checkpoint(tmp), tmp / "export", n_parity=4, log=lambda *_: None)
    repo = build_repository(bundle.directory, tmp / "repo")
    x = capture_inputs(1, seed=3)
    img, cal, wedge = x["image"].astype(np.float32), x["calibration"], x["wedge_mm"]
    servers = {
        "pool 0 + malloc (the default)": triton.start(repo, tmp / "both"),
        "neither (Triton's defaults)": triton.start(repo, tmp / "none", memory_guard=False),
        "malloc settings only": triton.start(repo, tmp / "malloc", memory_guard=False, env=triton.MEMORY_ENV),
    }
    saved, triton.MEMORY_ENV = triton.MEMORY_ENV, {}
    try:
        servers["pool 0 only"] = triton.start(repo, tmp / "pool")
    finally:
        triton.MEMORY_ENV = saved
    try:
        clients = {k: connect(f"triton://{s.grpc_target}/alloynet").backend for k, s in servers.items()}
        lat: dict[str, list[float]] = {k: [] for k in clients}
        for c in clients.values():
            for _ in range(20):
                c.infer_array(img, cal, wedge)
        for _ in range(args.rounds):
            for k, c in clients.items():
                for _ in range(25):
                    t0 = time.perf_counter()
                    c.infer_array(img, cal, wedge)
                    lat[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        for s in servers.values():
            triton.stop(s.workdir)
    print(f"# {machine()}; Triton b1 latency, {args.rounds} x 25 calls per variant, interleaved")
    print("| Triton memory settings | p50 ms | p90 ms |")
    print("|---|---|---|")
    for k, v in lat.items():
        print(f"| {k} | {pct(v, 0.5):.2f} | {pct(v, 0.9):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--checkpoint", type=Path)
    lat.add_argument("--n", type=int, default=300)
    lat.add_argument("--concurrency", type=int, default=8)
    lat.add_argument("--queue-delay-us", type=int, default=0, help="Triton dynamic batching max queue delay")
    lat.add_argument("--rounds", type=int, default=30, help="rounds of the interleaved overhead measurement")
    gc = sub.add_parser("guard-cost")
    gc.add_argument("--rounds", type=int, default=40)
    res = sub.add_parser("resilience")
    res.add_argument("--clients", type=int, default=4, help="client threads per server")
    res.add_argument("--rate", type=float, default=25.0, help="requests per second per client thread, at most")
    res.add_argument("--oversized-mb", type=int, default=400)
    res.add_argument("--bursts", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="alloynet-bench-"))
    try:
        {"latency": latency, "resilience": resilience, "guard-cost": guard_cost}[args.what](args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
