"""Fault injection for ingest, as a reliability engineer would do it, on 216 small captures.

Kills the object store and the ingest process mid-run, deletes objects between list and get, races two
ingests, aliases an image and feeds poison sidecars; after each, asserts that no stored capture was lost,
changed or duplicated, and that re-running converges to the manifest a run without faults produces.
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

import pytest

from alloynet.captures.format import parse_sidecar
from alloynet.captures.image import decode_image, encode_image, sha256
from alloynet.captures.layout import list_quarantine
from alloynet.captures.stores import LOCK_NAME, LocalStore, S3Store, WriterBusy
from alloynet.data.manifest import ingest_and_refresh
from infra.processes import alive
from tests.helpers import ROOT
from tests.helpers.dummy import DummyCaptureStore
from tests.helpers.faults import POISON, POISON_KEYS, LosingStore, png_bomb, poison_sidecars, snapshot, tiff_declaring

pytestmark = pytest.mark.slow

SIZES = {(32, 32)}


@pytest.fixture(scope="module")
def source():
    """216 captures (108 plates, 32x32) and the manifest that a fault-free ingest of them produces."""
    with DummyCaptureStore(n_max=30, size=32, imbalance_ratio=3, captures_per_plate=2, seed=7) as (src, _):
        (src.root / "manifest.csv").unlink()
        ref = LocalStore(Path(src.root).parent / (src.root.name + "-reference"))
        try:
            ingest_and_refresh(src, ref, accepted_sizes=SIZES)
            yield src, (ref.root / "manifest.csv").read_bytes()
        finally:
            shutil.rmtree(ref.root, ignore_errors=True)


def _sidecars(store) -> int:
    try:
        return sum(1 for e in os.scandir(store.root / "captures") if e.name.endswith(".json"))
    except FileNotFoundError:
        return 0


def _cli(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`alloynet ...` in its own process group (so it can be killed by PID with whatever it spawned)."""
    return subprocess.Popen(
        [sys.executable, "-m", "alloynet.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen, dest: LocalStore, n: int, timeout: float = 60) -> int:
    """SIGKILL ``proc`` once ``dest`` holds ``n`` captures; returns how many it held then (-1: it finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return -1
        held = _sidecars(dest)
        if held >= n:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return held
        time.sleep(0.002)
    raise TimeoutError("ingest made no progress")


def _assert_converged(src, dest: LocalStore, reference: bytes) -> None:
    assert snapshot(dest) == snapshot(src)  # every capture, byte for byte, nothing more
    assert (dest.root / "manifest.csv").read_bytes() == reference
    assert list(dest.root.rglob(".tmp-*")) == []
    assert list_quarantine(dest) == []


def test_ingest_killed_mid_run_again_and_again(source, tmp_path):
    src, reference = source
    dest = LocalStore(tmp_path / "data")
    total = len(snapshot(src)) // 2
    args = ["ingest", str(src.root), str(dest.root), "--accept-size", "32x32"]
    kills = [_kill_when(_cli(args), dest, n) for n in (15, 80, 150)]
    assert 15 <= kills[0] < total  # the first kill at least landed in the middle of a run
    assert not (dest.root / "manifest.csv").exists()  # no run finished: no half-batch manifest either
    final = _cli(args)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, out + err
    assert "is busy" not in out  # the killed holders' locks died with them
    _assert_converged(src, dest, reference)
    again = _cli(args)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and out.startswith("0 new, 0 duplicate, 0 quarantined") and "unchanged" in out


@pytest.mark.s3
def test_store_killed_mid_ingest_then_restarted(source, tmp_path):
    from infra import objectstore

    src, reference = source
    d = tmp_path / "s3"
    srv = objectstore.start(d, buckets=("captures",), timeout=90)
    try:
        s3 = S3Store("captures", "lab", endpoint_url=srv.endpoint, client=_client(srv))
        for info in src.list("captures/"):
            s3.put(info.key, src.get(info.key))
        dest = LocalStore(tmp_path / "data")
        args = ["ingest", f"s3://captures/lab?endpoint={srv.endpoint}", str(dest.root), "--accept-size", "32x32"]
        ing = _cli(args, srv.env())
        deadline = time.monotonic() + 60
        while _sidecars(dest) < 20 and ing.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.killpg(srv.pid, signal.SIGKILL)  # the whole SeaweedFS, without warning
        while alive(srv.pid):
            time.sleep(0.02)
        out, err = ing.communicate(timeout=120)
        held = _sidecars(dest)
        assert ing.returncode == 1 and 20 <= held < len(snapshot(src)) // 2, (held, out, err)
        assert out.startswith("error: object store unreachable: s3://captures/lab/") and out.count("\n") == 1
        assert "Traceback" not in err
        assert list_quarantine(dest) == []  # an outage is not the captures' fault
        assert not (dest.root / "manifest.csv").exists()

        port = int(srv.endpoint.rsplit(":", 1)[1])
        srv = objectstore.start(d, port, buckets=("captures",), timeout=90)  # same data, same address
        rerun = _cli(args, srv.env())
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, out + err
        assert out.startswith(f"{len(snapshot(src)) // 2 - held} new, 0 duplicate, 0 quarantined")
        _assert_converged(src, dest, reference)
    finally:
        objectstore.stop(d)


def _client(srv):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=srv.endpoint,
        aws_access_key_id=srv.access_key,
        aws_secret_access_key=srv.secret_key,
        region_name="us-east-1",
    )


class SlowSource:
    """A source whose reads take a little time, so that two ingests certainly overlap."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.uri = inner, delay, inner.uri

    def get(self, key):
        time.sleep(self.delay)
        return self.inner.get(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_two_ingests_at_once_one_waits_one_is_told(source, tmp_path):
    src, reference = source
    dest = LocalStore(tmp_path / "data")
    results: dict[str, object] = {}

    def run(name, wait):
        try:
            results[name] = ingest_and_refresh(SlowSource(src, 0.002), dest, accepted_sizes=SIZES, wait=wait)[0]
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            results[name] = exc

    first = threading.Thread(target=run, args=("first", 0))
    first.start()
    deadline = time.monotonic() + 30
    while not (dest.root / LOCK_NAME).exists() or not (dest.root / LOCK_NAME).read_text():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    waiter = threading.Thread(target=run, args=("waiter", 120))
    waiter.start()
    run("impatient", 0)
    first.join()
    waiter.join()
    assert isinstance(results["impatient"], WriterBusy) and "is busy: ingest (pid" in str(results["impatient"])
    assert len(results["first"].new) == len(snapshot(src)) // 2
    assert results["waiter"].new == [] and results["waiter"].duplicates == []
    _assert_converged(src, dest, reference)

    # two processes started together, both willing to wait: both succeed, the captures are stored once
    dest2 = LocalStore(tmp_path / "data2")
    args = ["ingest", str(src.root), str(dest2.root), "--accept-size", "32x32", "--wait", "120"]
    procs = [_cli(args) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    news = sorted(int(o.split(" new,")[0]) for o, _ in outs)
    assert news == [0, len(snapshot(src)) // 2]
    _assert_converged(src, dest2, reference)


@pytest.mark.s3
def test_poison_alias_and_vanishing_objects_in_one_batch(source, s3_server, s3_bucket, tmp_path):
    src, reference = source
    s3 = S3Store(s3_bucket, "lab", endpoint_url=s3_server.endpoint)
    ids = sorted(read_manifest_bytes(reference).capture_id)
    test_ids = sorted(read_manifest_bytes(reference).query("split == 'test'").capture_id)
    lost_sidecar, lost_image = f"captures/{ids[3]}.json", f"captures/{ids[4]}.png"
    for info in src.list("captures/"):
        s3.put(info.key, src.get(info.key))
    template = src.get(f"captures/{ids[0]}.json")
    for key, data in poison_sidecars(template, f"{test_ids[0]}.png").items():
        s3.put(key, data)
    saved = {k: src.get(k) for k in (lost_sidecar, lost_image)}
    dest = LocalStore(tmp_path / "data")

    res, _, _ = ingest_and_refresh(LosingStore(s3, set(saved)), dest, accepted_sizes=SIZES)
    expected = {f"captures/{n}.json": v for n, v in POISON.items()} | POISON_KEYS
    assert res.vanished == [lost_sidecar]
    assert set(res.quarantined) == set(expected) | {f"captures/{ids[4]}.json"}
    for entry in list_quarantine(dest):
        key = entry["source"].split("/lab/", 1)[1]
        field, text = expected.get(key, ("image", "image file missing"))
        assert entry["field"].startswith(field) and text in entry["reason"], (key, entry)
    assert len(res.new) == len(ids) - 2

    # the lost objects come back; the alias attack: a new capture naming a test capture's image, whose
    # source image is replaced at the same time
    time.sleep(1.1)  # S3 timestamps have one-second resolution
    for k, v in saved.items():
        s3.put(k, v, overwrite=True)
    victim = next(t for t in test_ids if t not in (ids[3], ids[4]))
    stored_victim = dest.get(f"captures/{victim}.png")
    sc = parse_sidecar(src.get(f"captures/{victim}.json"))
    pixels = decode_image(stored_victim).copy()
    pixels[0, 5, 5] ^= 9
    forged, _ = encode_image(pixels)
    raw = sc.model_dump(mode="json")
    raw.update(capture_id="intruder", plate_id="intruder-plate")
    raw["image"].update(file=f"{victim}.png", sha256=sha256(forged))
    s3.put("captures/intruder.json", json.dumps(raw).encode())
    s3.put(f"captures/{victim}.png", forged, overwrite=True)

    res, df, _ = ingest_and_refresh(s3, dest, accepted_sizes=SIZES)
    assert sorted(res.new) == sorted([ids[3], ids[4]]) and res.released == [f"quarantine/{ids[4]}/"]
    assert sorted(res.quarantined) == ["captures/intruder.json", f"captures/{victim}.png"]
    assert "image.file" in res.quarantined["captures/intruder.json"]
    assert "image changed at the source" in res.quarantined[f"captures/{victim}.png"]  # noticed, not taken
    assert dest.get(f"captures/{victim}.png") == stored_victim  # the stored test image is untouched
    assert snapshot(dest) == snapshot(src)
    assert set(df.capture_id) == set(ids) and "intruder" not in set(df.capture_id)
    # the same manifest as a fault-free history with the same arrivals: all but the two lost, then those
    clean_src = LocalStore(tmp_path / "clean-src")
    clean = LocalStore(tmp_path / "clean")
    for info in src.list("captures/"):
        if info.key not in saved:
            clean_src.put(info.key, src.get(info.key))
    ingest_and_refresh(clean_src, clean, accepted_sizes=SIZES)
    time.sleep(0.01)
    for k, v in saved.items():
        clean_src.put(k, v)
    ingest_and_refresh(clean_src, clean, accepted_sizes=SIZES)
    assert (dest.root / "manifest.csv").read_bytes() == (clean.root / "manifest.csv").read_bytes()
    # a re-run changes nothing, and the quarantine is exactly the poison, the intruder and the replaced image
    res, _, changed = ingest_and_refresh(s3, dest, accepted_sizes=SIZES)
    assert (res.new, res.quarantined, changed) == ([], {}, False)
    assert len(list_quarantine(dest)) == len(expected) + 2


def read_manifest_bytes(data: bytes):
    import io

    import pandas as pd

    return pd.read_csv(io.BytesIO(data), dtype={"capture_id": str})


@pytest.mark.s3
def test_hostile_labels_images_bombs_and_keys_on_s3(source, s3_server, s3_bucket, tmp_path):
    """What issue 25 found, replayed against SeaweedFS: a relabelled sidecar, an image swapped at the source,
    a PNG and a TIFF decompression bomb, and a key that carries terminal control. Every one is quarantined
    with a reason that says what happened; nothing stored changes until a relabel is recorded."""
    src, reference = source
    s3 = S3Store(s3_bucket, "lab", endpoint_url=s3_server.endpoint)
    for info in src.list("captures/"):
        s3.put(info.key, src.get(info.key))
    dest = LocalStore(tmp_path / "data")
    uri = f"s3://{s3_bucket}/lab?endpoint={s3_server.endpoint}"
    args = ["ingest", uri, str(dest.root), "--accept-size", "32x32"]
    first = _cli(args, s3_server.env())
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert (dest.root / "manifest.csv").read_bytes() == reference
    stored = snapshot(dest)

    ids = sorted(read_manifest_bytes(reference).capture_id)
    relabelled, swapped = ids[5], ids[6]
    raw = json.loads(src.get(f"captures/{relabelled}.json"))
    old_alloy = raw["truth"]["alloy"]
    new_alloy = "Al1050" if old_alloy != "Al1050" else "Al7075"
    raw["truth"]["alloy"], raw["plate_id"] = new_alloy, "plate-corrected"
    time.sleep(1.1)  # S3 timestamps have one-second resolution
    s3.put(f"captures/{relabelled}.json", json.dumps(raw).encode(), overwrite=True)
    pixels = decode_image(src.get(f"captures/{swapped}.png")).copy()
    pixels[0, 1, 1] ^= 3
    s3.put(f"captures/{swapped}.png", encode_image(pixels)[0], overwrite=True)  # no new sidecar
    template = json.loads(src.get(f"captures/{ids[0]}.json"))
    for name, fmt, data in (("bomb-png", "png", png_bomb(12000)), ("bomb-tiff", "tiff", tiff_declaring(20000))):
        sc = json.loads(json.dumps(template))
        sc["capture_id"], sc["plate_id"] = name, f"{name}-plate"
        sc["image"].update(file=f"{name}.{fmt}", format=fmt, sha256=sha256(data))
        s3.put(f"captures/{name}.{fmt}", data)
        s3.put(f"captures/{name}.json", json.dumps(sc).encode())
    s3.put("captures/evil\x1b[2J\nquarantined captures/fake.json", b"{}")

    run = _cli(args, s3_server.env())
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, out + err
    assert "\x1b" not in out + err and "evil\\x1b[2J\\nquarantined" in out
    assert not any(line.startswith("quarantined captures/fake.json") for line in out.splitlines())
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if line.startswith("quarantined ")}
    assert f"truth.alloy: stored {old_alloy!r}, new {new_alloy!r}" in lines[f"quarantined captures/{relabelled}.json"]
    assert "image changed at the source" in lines[f"quarantined captures/{swapped}.png"]
    assert "image declares 12000x12000 px, sidecar says 32x32" in lines["quarantined captures/bomb-png.json"]
    assert "image declares 20000x20000 px, sidecar says 32x32" in lines["quarantined captures/bomb-tiff.json"]
    assert len(lines) == 5
    assert snapshot(dest) == stored and (dest.root / "manifest.csv").read_bytes() == reference

    corrections = tmp_path / "corrections.csv"
    corrections.write_text(
        "capture_id,field,value,who,why\n"
        f"{relabelled},alloy,{new_alloy},lab,re-measured\n"
        f"{relabelled},plate_id,plate-corrected,lab,re-engraved\n"
    )
    fix = _cli(["data", "relabel", str(dest.root), str(corrections)])
    out, err = fix.communicate(timeout=120)
    assert fix.returncode == 0 and "1 conflict(s) released" in out and "(updated)" in out, out + err
    df = read_manifest_bytes((dest.root / "manifest.csv").read_bytes())
    assert df.set_index("capture_id").loc[relabelled, "alloy"] == new_alloy
    hist = _cli(["data", "history", str(dest.root), relabelled])
    out, _ = hist.communicate(timeout=60)
    assert f"alloy: {old_alloy!r} -> {new_alloy!r}" in out and "by lab" in out
