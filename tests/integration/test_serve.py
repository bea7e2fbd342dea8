"""`alloynet serve` end to end: real Triton and TorchServe under a real supervisor, on free ports given
explicitly (never the fixed defaults), serving a registry's champion: idempotent start, the env file the
client reads, hot swap and rollback under load with zero failed requests, kill -9 of each server under
load, TorchServe keys renewed on time, guard rails (per-capture errors, decompression bombs, NOT_FOUND,
size limits, memory after oversized requests), and stop leaving nothing behind even after the supervisor
itself was killed. One supervisor for the whole module; the tests run in file order. Speed is measured in
bench/serve.py, never asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from alloynet.physics import ALLOY_NAMES
from tests.helpers.serving import capture_inputs

pytestmark = [pytest.mark.serving, pytest.mark.slow]

ALLOYNET = str(Path(sys.executable).parent / "alloynet")
TOKEN_EXPIRY_MIN = 0.4  # 24 s: the keys are renewed several times while this module runs


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ALLOYNET, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def _wait(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def bundles(trained_bundle_factory):
    return {"v0001": trained_bundle_factory(0), "v0002": trained_bundle_factory(1)}


@pytest.fixture(scope="module")
def registry(bundles, tmp_path_factory):
    """Two published versions, each with a Triton repository and a .mar, as the nightly flow publishes them."""
    from alloynet.registry import open_registry
    from serving.torchserve.archive import build_mar
    from serving.triton.repository import build_repository

    root = tmp_path_factory.mktemp("registry")
    reg = open_registry(root / "registry")
    for version, bundle in bundles.items():
        rel = root / f"release-{version}"
        build_repository(bundle.directory, rel / "triton")
        build_mar(bundle.directory, rel / "torchserve", batch_size=4, max_batch_delay_ms=5)
        assert reg.publish(rel, metrics={}).version == version
    broken = root / "release-broken"  # published intact (its hashes match), but Triton cannot load it
    shutil.copytree(root / "release-v0001", broken)
    (broken / "triton" / "alloynet" / "1" / "model.onnx").write_bytes(b"not an ONNX model")
    assert reg.publish(broken, metrics={}).version == "v0003"
    reg.promote("v0001", "first champion")
    return reg


@pytest.fixture(scope="module")
def inputs():
    x = capture_inputs(3, seed=3)
    return {
        "image": x["image"][0],
        "calibration": x["calibration"][0],
        "wedge_mm": float(x["wedge_mm"][0, 0]),
        "all": x,
    }


@pytest.fixture(scope="module")
def references(bundles, inputs):
    """What each version answers for the load's capture (in-process ONNX Runtime): tells who answered."""
    from alloynet.export import onnx_session

    feed = {
        "image": inputs["image"][None].astype(np.float32),
        "calibration": inputs["calibration"][None],
        "wedge_mm": np.array([[inputs["wedge_mm"]]], np.float32),
    }
    return {v: onnx_session(b.path("onnx")).run(["probabilities"], feed)[0][0] for v, b in bundles.items()}


@pytest.fixture(scope="module")
def serve(registry, tmp_path_factory):
    """`alloynet serve start --torchserve` on free ports; stopped at the end whatever happened."""
    from infra.processes import free_port

    d = tmp_path_factory.mktemp("serve")
    ports = {
        "triton-grpc-port": free_port(),
        "torchserve-grpc-port": free_port(),
        "torchserve-http-port": free_port(),
        "torchserve-grpc-management-port": free_port(),
        "torchserve-metrics-port": free_port(),
    }
    args = [
        "serve",
        "start",
        "--dir",
        str(d),
        "--registry",
        str(registry.store.root),
        "--torchserve",
        "--poll",
        "1",
        "--token-expiry-min",
        str(TOKEN_EXPIRY_MIN),
        "--max-request-mb",
        "1",
        "--health-every",
        "2",
        "--hang-after",
        "4",
    ]
    args += [a for k, v in ports.items() for a in (f"--{k}", str(v))]
    try:
        r = _cli(*args)
        assert r.returncode == 0, r.stdout + r.stderr
        yield {
            "dir": d,
            "ports": ports,
            "args": args,
            "start_output": r.stdout,
            "triton": f"triton://127.0.0.1:{ports['triton-grpc-port']}/alloynet",
            "torchserve": f"torchserve://127.0.0.1:{ports['torchserve-grpc-port']}/alloynet",
            "key_file": d / "torchserve" / "key_file.json",
        }
    finally:
        _cli("serve", "stop", "--dir", str(d))


def _keys(serve) -> dict:
    """TorchServe's key file. TorchServe rewrites it in place (renewals, restarts): a read can catch it empty."""

    def read():
        try:
            return json.loads(serve["key_file"].read_text())
        except (OSError, ValueError):
            return None

    return _wait(read, 10, "a complete key file", interval=0.05)


def _state(serve) -> dict:
    from infra.serve import status

    return status(serve["dir"])


class Load:
    """Client threads sending one capture in a loop to each URL; records, per thread, which version answered,
    or the error. Per thread, since a request another thread sent before a swap may be answered by the old
    version after this thread's first answer from the new one: only one client's answers are in order."""

    def __init__(self, serve, inputs, references, per_server: int = 2):
        self.urls = [serve["triton"], serve["torchserve"]] * per_server
        self.key_file, self.inputs, self.refs = serve["key_file"], inputs, references
        self.answers: list[list[tuple[float, str]]] = [[] for _ in self.urls]
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def who(self, p) -> str:
        got = np.array([p.probabilities[c] for c in ALLOY_NAMES])
        return next((v for v, ref in self.refs.items() if np.allclose(got, ref, atol=1e-4)), "?")

    def run(self, i: int) -> None:
        from serving.client import connect

        url = self.urls[i]
        with connect(url, key_file=self.key_file) as client:  # default retry budget: what the line gets
            while not self.stopping.is_set():
                try:
                    p = client.predict(self.inputs["image"], self.inputs["calibration"], self.inputs["wedge_mm"])
                    with self.lock:
                        self.answers[i].append((time.monotonic(), self.who(p)))
                except Exception as exc:
                    with self.lock:
                        self.errors.append(f"{url}: {exc!r}")

    def since(self, t: float) -> dict[str, set[str]]:
        with self.lock:
            got: dict[str, set[str]] = {u: set() for u in self.urls}
            for u, a in zip(self.urls, self.answers):
                got[u] |= {v for at, v in a if at >= t}
            return got

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(len(self.urls))]
        for t in self.threads:
            t.start()
        _wait(lambda: all(len(a) >= 3 for a in self.answers), 60, "the first answers")
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)


# -- start, status, the env file ------------------------------------------------------------------------


def test_start_prints_endpoints_writes_env_file_and_is_idempotent(serve, tmp_path, inputs):
    from alloynet.captures.image import encode_image

    out = serve["start_output"]
    assert serve["triton"] in out and serve["torchserve"] in out and str(serve["key_file"]) in out
    env_file = serve["dir"] / "serving.env"
    assert f"export ALLOYNET_SERVING_URL={serve['triton']}" in env_file.read_text()
    assert f"ALLOYNET_TORCHSERVE_KEY_FILE={serve['key_file']}" in env_file.read_text()
    st = _state(serve)
    assert st["status"] == "serving" and st["serving"]["version"] == "v0001"

    again = _cli(*serve["args"])  # a second start: reports what runs, starts nothing
    assert again.returncode == 0 and "already serving" in again.stdout, again.stdout + again.stderr
    st2 = _state(serve)
    assert st2["supervisor_pid"] == st["supervisor_pid"]
    assert {n: s["pid"] for n, s in st2["servers"].items()} == {n: s["pid"] for n, s in st["servers"].items()}

    capture = tmp_path / "capture.png"
    capture.write_bytes(encode_image(inputs["image"])[0])
    env = {"ALLOYNET_SERVE_DIR": str(serve["dir"])}  # no --url, no key: both come from the env file
    for extra in ([], ["--url", serve["torchserve"]]):
        r = _cli("infer", str(capture), "--json", *extra, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        line = json.loads(r.stdout.strip().splitlines()[-1])
        assert line["alloy"] in ALLOY_NAMES and line["server"] == ("torchserve" if extra else "triton")

    r = _cli("serve", "status", "--dir", str(serve["dir"]))
    assert r.returncode == 0 and "serving v0001 (generation 1)" in r.stdout, r.stdout

    # one TorchServe per working directory: a second one there is refused (and the first left alone)
    from infra import torchserve

    with pytest.raises(RuntimeError, match="still runs"):
        torchserve.start(
            serve["dir"] / "torchserve" / "model-store", ["alloynet=alloynet-g1.mar"], serve["dir"] / "torchserve"
        )
    assert _state(serve)["servers"]["torchserve"]["up"]


# -- hot swap -------------------------------------------------------------------------------------------


def test_promotion_and_rollback_under_load_drop_no_request(serve, registry, inputs, references):
    with Load(serve, inputs, references) as load:
        assert set().union(*load.since(0).values()) == {"v0001"}
        registry.promote("v0002", "a better model")
        r = _cli("serve", "reload", "--dir", str(serve["dir"]))
        assert r.returncode == 0 and "serving v0002 (generation 2)" in r.stdout, r.stdout + r.stderr
        swapped = time.monotonic()
        _wait(
            lambda: all(v == {"v0002"} for v in load.since(swapped).values()) and all(load.since(swapped).values()),
            60,
            "answers from v0002 on both servers",
        )

        rolled = _cli("registry", "rollback", "-r", str(registry.store.root), "--reason", "test")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        # no reload: the supervisor reads the pointer every second (--poll 1)
        from infra.serve import caught_up

        _wait(
            lambda: (_state(serve)["champion"] or {}).get("generation") == 3 and caught_up(_state(serve)),
            180,
            "the rollback to be served by both servers",
        )
        back = time.monotonic()
        _wait(
            lambda: all(v == {"v0001"} for v in load.since(back).values()) and all(load.since(back).values()),
            60,
            "answers from v0001 again",
        )

        registry.promote("v0003", "a release Triton cannot load")
        r = _cli("serve", "reload", "--dir", str(serve["dir"]))
        assert r.returncode == 1 and "swap to v0003 (generation 4) failed on triton" in r.stdout, r.stdout + r.stderr
        assert "serving v0001 (generation 3)" in r.stdout
        after = time.monotonic()
        _wait(lambda: all(load.since(after).values()), 60, "answers after the failed swap")
    assert load.errors == []
    for url, answers in zip(load.urls, load.answers):
        seen = [v for _, v in answers]
        assert "?" not in seen
        order = [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]]
        assert order == ["v0001", "v0002", "v0001"], (url, order)
    st = _state(serve)
    assert st["serving"] == {"version": "v0001", "generation": 3} and st["servers"]["torchserve"]["generation"] == 3
    assert st["failed_swap"]["generation"] == 4 and st["failed_swap"]["server"] == "triton"
    versions = sorted(
        p.name for p in (serve["dir"] / "triton" / "repository" / "alloynet").iterdir() if p.name.isdigit()
    )
    assert versions == ["2", "3"]  # the one serving and the one before it; not the one that failed


# -- crashes ----------------------------------------------------------------------------------------------


def test_killed_servers_are_back_on_the_same_ports_without_failed_requests(serve, inputs, references):
    import psutil

    before = _state(serve)["servers"]
    old_key = _keys(serve)["inference"]["key"]
    with Load(serve, inputs, references) as load:
        os.kill(before["triton"]["pid"], signal.SIGKILL)
        _wait(
            lambda: _state(serve)["servers"]["triton"]["restarts"] == 1 and _state(serve)["servers"]["triton"]["up"],
            60,
            "Triton to be restarted",
        )
        java = [c for c in psutil.Process(before["torchserve"]["pid"]).children(recursive=True) if "java" in c.name()]
        assert java, "TorchServe's frontend (java) not found"
        java[0].kill()
        _wait(
            lambda: (
                _state(serve)["servers"]["torchserve"]["restarts"] == 1 and _state(serve)["servers"]["torchserve"]["up"]
            ),
            120,
            "TorchServe to be restarted",
        )
        back = time.monotonic()
        _wait(lambda: all(len(v) for v in load.since(back).values()), 60, "answers after the restarts")
        # restarted, each serves the version it served before: not the champion that failed to load
        assert set().union(*load.since(back).values()) == {"v0001"}
    assert load.errors == []
    after = _state(serve)["servers"]
    for name in ("triton", "torchserve"):
        assert after[name]["pid"] != before[name]["pid"] and after[name]["grpc"] == before[name]["grpc"]
    # a restarted TorchServe makes new keys; the clients read them from the key file when refused
    assert _keys(serve)["inference"]["key"] != old_key
    # a server that stops answering (here: stopped with SIGSTOP) is restarted too, after 4 missed probes
    hung = _state(serve)["servers"]["triton"]["pid"]
    os.kill(hung, signal.SIGSTOP)
    _wait(
        lambda: _state(serve)["servers"]["triton"]["restarts"] == 2 and _state(serve)["servers"]["triton"]["up"],
        90,
        "the hung Triton to be replaced",
    )
    assert "has not answered 4 health probes" in (serve["dir"] / "supervisor.log").read_text()
    from serving.client import connect

    with connect(serve["triton"]) as client:
        assert client.predict(inputs["image"], inputs["calibration"], inputs["wedge_mm"]).alloy in ALLOY_NAMES
    # the killed Tritons' shared memory is gone; only the running one's may be left (alloynet's own backend
    # uses none: the Python backend's stubs of repositories packaged with a model.py do)
    current = (serve["dir"] / "triton" / "tritonserver.shm").read_text().strip()
    prefix = f"alloynet{_state(serve)['supervisor_pid']}-"
    ours = [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)]
    assert all(name.startswith(current) for name in ours), (current, ours)


def test_torchserve_keys_are_renewed_before_they_expire(serve, inputs):
    from serving.client import PermissionDeniedError, connect

    # the module has run longer than a key's lifetime: the supervisor has renewed them, and they still work
    assert (serve["dir"] / "torchserve" / "config.properties").read_text().count(
        f"token_expiration_min={TOKEN_EXPIRY_MIN}"
    ) == 1
    # the keys, like Triton's admin key, are the serving user's only
    assert (serve["dir"] / "torchserve").stat().st_mode & 0o777 == 0o700
    assert (serve["dir"] / "triton-admin.key").stat().st_mode & 0o777 == 0o600
    _wait(lambda: _state(serve)["torchserve_keys_renewed"] >= 2, 60, "keys to be renewed")
    from datetime import datetime, timezone

    from infra.supervisor.keys import instant

    keys = _keys(serve)
    assert instant(keys["inference"]["expiration time"]) > datetime.now(timezone.utc)
    stale = keys["inference"]["key"]
    _wait(lambda: _keys(serve)["inference"]["key"] != stale, 60, "a renewal")
    with connect(serve["torchserve"], token=stale, retry_budget_s=2) as client:  # a key given, no file: refused
        with pytest.raises(PermissionDeniedError, match="PERMISSION_DENIED") as exc:
            client.predict(inputs["image"], inputs["calibration"], inputs["wedge_mm"])
        assert exc.value.code == "PERMISSION_DENIED" and "give the key file" in str(exc.value)
    with connect(serve["torchserve"], token=stale, key_file=serve["key_file"]) as client:  # re-read: answered
        assert client.predict(inputs["image"], inputs["calibration"], inputs["wedge_mm"]).alloy in ALLOY_NAMES


# -- guard rails -----------------------------------------------------------------------------------------


def _bomb() -> bytes:
    """A valid 16-bit PNG claiming 10000 x 10000 px, about 200 KB on disk (1.2 GB to decode)."""
    import struct
    import zlib

    z, row = zlib.compressobj(9), bytes(1 + 2 * 10000)  # filter byte + 10000 16-bit pixels
    raw = b"".join(z.compress(row) for _ in range(10000)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 16, 0, 0, 0, 0))
    return png + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_bad_captures_are_answered_one_by_one_with_clear_codes(serve, inputs):
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    from serving.client import InvalidCaptureError, ModelNotFoundError, ServingError, connect

    good = inputs["all"]["image"]
    nan = good[1].astype(np.float32)
    nan[0, 3, 3] = np.nan
    bomb = _bomb()
    assert len(bomb) < 300_000
    for url in (serve["triton"], serve["torchserve"]):
        server = url.split(":")[0]
        with connect(url, key_file=serve["key_file"]) as client:
            out = client.predict_batch([good[0], nan, good[2], bomb], errors="return")
            assert [type(o).__name__ for o in out] == [
                "Prediction",
                "InvalidCaptureError",
                "Prediction",
                "InvalidCaptureError",
            ], (url, out)
            assert out[1].code == "INVALID_ARGUMENT" and "NaN" in str(out[1]) and "capture 1" in str(out[1])
            assert str(out[1]).startswith(f"{server} at 127.0.0.1:")
            assert "10000" in str(out[3]) and "before decoding" in str(out[3]), out[3]
            with pytest.raises(InvalidCaptureError) as exc:  # errors="raise": the first, carrying all results
                client.predict_batch([good[0], nan])
            assert len(exc.value.results) == 2 and exc.value.results[0].alloy in ALLOY_NAMES
            with pytest.raises(InvalidCaptureError, match=r"expected \[C, H, W\] = \[1, 64, 64\]|declares"):
                client.predict(np.zeros((2, 64, 64), np.uint16))
        with connect(url.rsplit("/", 1)[0] + "/no_such_model", key_file=serve["key_file"]) as client:
            with pytest.raises(ModelNotFoundError) as exc:
                client.predict(good[0])
            assert exc.value.code == "NOT_FOUND" and "no_such_model" in str(exc.value)

    # Triton on its own (a raw client): the graph checks the values, so a batch with a bad capture among good
    # ones is answered, each item with its status (contract.STATUSES); the server checks only shapes and dtypes
    from alloynet import contract

    raw = g.InferenceServerClient(serve["triton"].split("//")[1].split("/")[0])

    def infer_raw(images: np.ndarray, wedges: np.ndarray) -> list[str]:
        n = len(images)
        sent = {
            "image": images.astype(np.float32),
            "calibration": inputs["all"]["calibration"][:n],
            "wedge_mm": wedges.astype(np.float32),
        }
        tensors = []
        for name, arr in sent.items():
            t = g.InferInput(name, list(arr.shape), "FP32")
            t.set_data_from_numpy(np.ascontiguousarray(arr))
            tensors.append(t)
        res = raw.infer("alloynet", tensors, client_timeout=30)
        return [contract.STATUS_NAMES[contract.status_code(v)] for v in res.as_numpy("status").reshape(-1)]

    wedges = inputs["all"]["wedge_mm"][:3]
    assert infer_raw(np.stack([good[0], nan, good[2]]), wedges) == ["ok", "image_not_finite", "ok"]
    # good pixels, but the third capture's wedge size is not a wedge in mm (contract v3's wedge_mm input)
    assert infer_raw(good[:3], np.array([[50.0], [70.0], [-5.0]])) == ["ok", "ok", "wedge_out_of_range"]
    only_image = g.InferInput("image", [1, *good[0].shape], "FP32")
    only_image.set_data_from_numpy(good[:1].astype(np.float32))
    with pytest.raises(InferenceServerException) as exc:  # what the graph cannot check: the inputs' shapes
        raw.infer("alloynet", [only_image], client_timeout=30)
    assert "INVALID_ARGUMENT" in str(exc.value.status()) and "calibration" in exc.value.message()
    raw.close()

    # TorchServe refuses a request over its size limit (1 MB here) before it reaches a worker; a client that
    # knows the limit (from the env file) refuses it before sending
    too_big = np.zeros((1, 600, 600), np.float32)
    os.environ["ALLOYNET_SERVE_DIR"] = str(serve["dir"])
    try:
        with connect(serve["torchserve"]) as client:
            with pytest.raises(InvalidCaptureError, match="over the server's limit of 1,048,576 bytes") as exc:
                client.predict(too_big)
            assert exc.value.code == "RESOURCE_EXHAUSTED"
    finally:
        del os.environ["ALLOYNET_SERVE_DIR"]
    with connect(serve["torchserve"], key_file=serve["key_file"]) as client:  # limit unknown: the server refuses
        with pytest.raises(ServingError) as exc:
            client.predict(too_big)
        assert exc.value.code in ("RESOURCE_EXHAUSTED", "CANCELLED"), exc.value  # grpc-java resets the stream
        assert client.predict(good[0]).alloy in ALLOY_NAMES  # and keeps serving


def test_triton_memory_comes_back_after_oversized_requests(serve):
    import psutil
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    pid = _state(serve)["servers"]["triton"]["pid"]
    rss = lambda: psutil.Process(pid).memory_info().rss / 2**20  # noqa: E731
    client = g.InferenceServerClient(serve["triton"].split("//")[1].split("/")[0])
    before = rss()
    context = []  # the other inputs, well formed: the image alone is refused
    for name, arr in (
        ("calibration", np.array([[[1000.0, 50000.0]]], np.float32)),
        ("wedge_mm", np.array([[50.0]], np.float32)),
    ):
        context.append(g.InferInput(name, list(arr.shape), "FP32"))
        context[-1].set_data_from_numpy(arr)
    for _ in range(3):  # 3 x 200 MB, each refused (its size does not match its shape)
        inp = g.InferInput("image", [1, 1, 64, 64], "FP32")
        inp._raw_content = bytes(200 << 20)
        inp._input.ClearField("contents")
        with pytest.raises(InferenceServerException, match="byte size"):
            client.infer("alloynet", [inp, *context], client_timeout=120)
        del inp
    time.sleep(1)
    after = rss()
    client.close()
    # without the fix each refused request stayed resident (about +200 MB each here)
    assert after - before < 100, f"Triton RSS {before:.0f} -> {after:.0f} MiB after 600 MB of refused requests"


# -- stop -------------------------------------------------------------------------------------------------


def test_stop_leaves_nothing_even_after_the_supervisor_was_killed(serve):
    from infra.processes import port_free, tagged_processes
    from infra.serve import TAG_ENV

    st = _state(serve)
    tag = st["tag"]
    assert len(tagged_processes(TAG_ENV, tag)) >= 4  # supervisor, tritonserver + stub, torchserve + java + worker
    os.kill(st["supervisor_pid"], signal.SIGKILL)
    _wait(lambda: _state(serve)["status"].startswith("down"), 10, "status to say the supervisor is down")
    r = _cli("serve", "status", "--dir", str(serve["dir"]))
    assert r.returncode == 3 and "down (supervisor not running)" in r.stdout, r.stdout
    assert "UNSUPERVISED" in r.stdout and "still live" in r.stdout, r.stdout
    r = _cli("serve", "stop", "--dir", str(serve["dir"]))
    assert r.returncode == 0 and "leftover" in r.stdout, r.stdout
    assert tagged_processes(TAG_ENV, tag) == []
    assert all(port_free(p) for p in serve["ports"].values())
    assert not (serve["dir"] / "serving.env").exists()
    prefix_file = serve["dir"] / "triton" / "tritonserver.shm"
    assert not prefix_file.exists()
    r = _cli("serve", "status", "--dir", str(serve["dir"]))
    assert r.returncode == 3 and "status: stopped" in r.stdout, r.stdout
