"""Capture format, validation errors that name file and field, local store, ingest and quarantine."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from alloynet.captures.format import parse_sidecar, validate_capture
from alloynet.captures.image import CaptureError, decode_image, encode_image
from alloynet.captures.ingest import ingest
from alloynet.captures.layout import list_quarantine, read_capture
from alloynet.captures.stores import LocalStore, ObjectExists, open_store
from tests.helpers.dummy import DummyCaptureStore, corrupt_capture


def test_png_and_tiff_roundtrip():
    rng = np.random.default_rng(0)
    one = rng.integers(0, 65536, (1, 16, 24), dtype=np.uint16)
    three = rng.integers(0, 65536, (3, 16, 24), dtype=np.uint16)
    for img, fmt in ((one, "png"), (three, "tiff")):
        data, got_fmt = encode_image(img)
        assert got_fmt == fmt
        assert np.array_equal(decode_image(data), img)


def test_decode_rejects_8_bit_empty_and_garbage():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    with pytest.raises(CaptureError, match=r"x\.png: image: expected a 16-bit single-channel PNG"):
        decode_image(buf.getvalue(), "x.png")
    with pytest.raises(CaptureError, match="file is empty"):
        decode_image(b"", "x.png")
    with pytest.raises(CaptureError, match="bad magic bytes"):
        decode_image(b"hello world", "x.png")


@pytest.fixture
def store():
    with DummyCaptureStore(n_max=3, size=32, imbalance_ratio=3) as (st, manifest):
        yield st, manifest


def test_read_capture_roundtrip(store):
    st, manifest = store
    cap = read_capture(st, manifest.capture_id[0], accepted_sizes={(32, 32)})
    assert cap.image.shape == (1, 32, 32) and cap.sidecar.truth.alloy == manifest.alloy[0]


@pytest.mark.parametrize(
    "how, field, text",
    [
        ("truncate", "image", "corrupt or truncated PNG"),
        ("garbage", "image", "corrupt or truncated PNG"),
        ("hash", "image.sha256", "hash mismatch"),
        ("alloy", "truth.alloy", "String should match pattern"),
        ("thickness", "truth.nominal_thickness_mm", "thickness must be > 0"),
        ("sidecar_json", "sidecar", "not valid JSON"),
        ("no_image", "image", "image file missing"),
    ],
)
def test_validation_errors_name_file_and_field(store, how, field, text):
    st, manifest = store
    cid = manifest.capture_id[0]
    corrupt_capture(st, cid, how)
    with pytest.raises(CaptureError) as err:
        read_capture(st, cid, accepted_sizes={(32, 32)})
    assert err.value.field == field and text in str(err.value)
    assert cid in str(err.value)  # the message names the file


def test_wrong_size_is_rejected(store):
    st, manifest = store
    with pytest.raises(CaptureError, match=r"image.shape: size 32x32 not accepted"):
        read_capture(st, manifest.capture_id[0], accepted_sizes={(64, 64)})


def test_local_store_never_overwrites(tmp_path):
    s = LocalStore(tmp_path)
    s.put("a/b.bin", b"one")
    with pytest.raises(ObjectExists):
        s.put("a/b.bin", b"two")
    assert s.get("a/b.bin") == b"one"
    s.put("a/b.bin", b"two", overwrite=True)
    assert s.get("a/b.bin") == b"two"
    assert [o.key for o in s.list("a/")] == ["a/b.bin"]  # no temp files left behind
    with pytest.raises(ValueError, match="invalid object key"):
        s.put("../escape", b"x")


def test_ingest_quarantines_bad_captures_and_is_idempotent(store, tmp_path):
    src, manifest = store
    ids = list(manifest.capture_id)
    corrupt_capture(src, ids[0], "hash")
    corrupt_capture(src, ids[1], "alloy")
    dest = LocalStore(tmp_path / "dest")
    first = ingest(src, dest, accepted_sizes={(32, 32)})
    assert sorted(first.new) == sorted(ids[2:])
    assert len(first.quarantined) == 2
    reasons = {r["folder"].split("/")[1]: r for r in list_quarantine(dest)}
    assert reasons[ids[0]]["field"] == "image.sha256" and "hash mismatch" in reasons[ids[0]]["reason"]
    assert reasons[ids[1]]["field"] == "truth.alloy"
    assert (dest.root / "quarantine" / ids[0] / f"{ids[0]}.png").exists()  # kept as received
    before = sorted(p.relative_to(dest.root) for p in dest.root.rglob("*"))
    again = ingest(src, dest, accepted_sizes={(32, 32)})
    assert again.new == [] and again.quarantined == {}
    assert sorted(p.relative_to(dest.root) for p in dest.root.rglob("*")) == before


def test_ingest_conflicting_upload_never_overwrites(store, tmp_path):
    src, manifest = store
    dest = LocalStore(tmp_path / "dest")
    ingest(src, dest, accepted_sizes={(32, 32)})
    cid = manifest.capture_id[0]
    kept = dest.get(f"captures/{cid}.json")
    # the same capture id arrives again with different pixels (and a self-consistent sidecar)
    sc = parse_sidecar(src.get(f"captures/{cid}.json"))
    img = decode_image(src.get(f"captures/{sc.image.file}")).copy()
    img[0, 0, 0] ^= 1
    data, _ = encode_image(img)
    sc.image.sha256 = __import__("hashlib").sha256(data).hexdigest()
    src.put(f"captures/{sc.image.file}", data, overwrite=True)
    src.put(f"captures/{cid}.json", sc.model_dump_json().encode(), overwrite=True)
    res = ingest(src, dest, accepted_sizes={(32, 32)})
    key = f"captures/{cid}.json"
    assert list(res.quarantined) == [key] and "conflicting upload" in res.quarantined[key]
    assert dest.get(f"captures/{cid}.json") == kept


def test_ingest_resumes_after_a_crash(store, tmp_path):
    src, manifest = store
    dest = LocalStore(tmp_path / "dest")
    part = ingest(src, dest, limit=3, accepted_sizes={(32, 32)})  # as if the run died after three captures
    rest = ingest(src, dest, accepted_sizes={(32, 32)})
    assert len(part.new) == 3 and sorted(part.new + rest.new) == sorted(manifest.capture_id)


def test_open_store_parses_uris(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(ValueError, match="missing bucket"):
        open_store("s3:///x")


def test_validate_capture_checks_calibration(store):
    st, manifest = store
    cid = manifest.capture_id[0]
    raw = json.loads(st.get(f"captures/{cid}.json"))
    raw["calibration"]["flat_adu"] = [500.0]
    sc = parse_sidecar(json.dumps(raw).encode(), "x.json")
    with pytest.raises(CaptureError, match="flat level must exceed the dark level"):
        validate_capture(sc, st.get(f"captures/{sc.image.file}"), "x.png", {(32, 32)})


# ---- poison, aliasing, quarantine as a state, orphans, the writer lock ------------------------------------
import hashlib  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from alloynet.captures.ingest import load_watermark, retry_quarantined  # noqa: E402
from alloynet.captures.stores import StoreUnavailable, WriterBusy, writer_lock  # noqa: E402
from tests.helpers.faults import POISON, POISON_KEYS, LosingStore, poison_sidecars, snapshot  # noqa: E402

SIZES = {(32, 32)}


def _put_poison(src, manifest):
    template = src.get(f"captures/{manifest.capture_id[0]}.json")
    victim = f"{manifest.capture_id[1]}.png"
    for key, data in poison_sidecars(template, victim).items():
        src.put(key, data, overwrite=True)
    return victim


def test_poison_sidecars_are_quarantined_and_the_batch_goes_on(store, tmp_path):
    src, manifest = store
    dest = LocalStore(tmp_path / "dest")
    ingest(src, dest, accepted_sizes=SIZES)
    stored = snapshot(dest)
    _put_poison(src, manifest)
    time.sleep(0.01)
    res = ingest(src, dest, accepted_sizes=SIZES)
    assert res.new == [] and snapshot(dest) == stored  # nothing stored was replaced or added
    expected = {f"captures/{n}.json": v for n, v in POISON.items()} | POISON_KEYS
    assert set(res.quarantined) == set(expected)
    by_source = {r["source"].rsplit("/captures/", 1)[1]: r for r in list_quarantine(dest)}
    for key, (field, text) in expected.items():
        entry = by_source[key[len("captures/") :]]
        assert entry["field"].startswith(field) and text in entry["reason"], (key, entry)
    # the watermark moved past every poison: the next run (or a Prefect retry) does not stop there again
    again = ingest(src, dest, accepted_sizes=SIZES)
    assert (again.new, again.quarantined, again.retried) == ([], {}, [])
    assert load_watermark(dest, src)[0] >= max(o.modified for o in src.list("captures/"))
    assert not (tmp_path / "escape.png").exists() and not (dest.root / "escape.png").exists()


def test_an_aliased_image_cannot_replace_a_stored_capture(store, tmp_path):
    src, manifest = store
    dest = LocalStore(tmp_path / "dest")
    ingest(src, dest, accepted_sizes=SIZES)
    victim = manifest.capture_id[1]
    before = dest.get(f"captures/{victim}.png")
    # a new capture whose sidecar names the victim's image, with a hash matching its own (different) pixels
    sc = parse_sidecar(src.get(f"captures/{manifest.capture_id[0]}.json"))
    img = decode_image(src.get(f"captures/{manifest.capture_id[0]}.png")).copy()
    img[0, 0, 0] ^= 7
    data, _ = encode_image(img)
    raw = json.loads(sc.model_dump_json())
    raw.update(capture_id="intruder")
    raw["image"].update(file=f"{victim}.png", sha256=hashlib.sha256(data).hexdigest())
    src.put(f"captures/{victim}.png", data, overwrite=True)  # the source's copy is replaced too
    src.put("captures/intruder.json", json.dumps(raw).encode())
    res = ingest(src, dest, accepted_sizes=SIZES)
    assert sorted(res.quarantined) == ["captures/intruder.json", f"captures/{victim}.png"]
    assert "image.file" in res.quarantined["captures/intruder.json"]
    assert "image changed at the source" in res.quarantined[f"captures/{victim}.png"]  # noticed, not taken
    assert dest.get(f"captures/{victim}.png") == before


def test_loader_refuses_an_image_changed_behind_the_manifest(store):
    from alloynet.data.dataset import CaptureDataset

    st, manifest = store
    ds = CaptureDataset(st, manifest, split=None, cache=False)
    ds[0]
    cid = ds.rows.capture_id[0]
    img = decode_image(st.get(f"captures/{cid}.png")).copy()
    img[0, 1, 1] ^= 1
    st.put(f"captures/{cid}.png", encode_image(img)[0], overwrite=True)
    with pytest.raises(CaptureError, match=rf"{cid}\.png: image\.sha256: stored image has sha256"):
        ds[0]


def test_quarantine_is_a_state_a_fixed_capture_leaves_it(store, tmp_path):
    src, manifest = store
    ids = list(manifest.capture_id)
    img_bytes = src.get(f"captures/{ids[0]}.png")
    src.delete(f"captures/{ids[0]}.png")  # briefly missing
    corrupt_capture(src, ids[1], "hash")  # a wrong hash in the sidecar
    dest = LocalStore(tmp_path / "dest")
    first = ingest(src, dest, accepted_sizes=SIZES)
    assert set(first.quarantined) == {f"captures/{ids[0]}.json", f"captures/{ids[1]}.json"}
    entries = {r["folder"]: r for r in list_quarantine(dest)}
    assert {r["attempts"] for r in entries.values()} == {1}
    # nothing changed: the next run does not retry (and does not count attempts)
    assert ingest(src, dest, accepted_sizes=SIZES).retried == []
    # the image is restored: the capture is retried because its image changed, and leaves the quarantine
    src.put(f"captures/{ids[0]}.png", img_bytes)
    second = ingest(src, dest, accepted_sizes=SIZES)
    assert second.retried == [f"captures/{ids[0]}.json"] and second.new == [ids[0]]
    assert second.released == [f"quarantine/{ids[0]}/"]
    assert [r["folder"] for r in list_quarantine(dest)] == [f"quarantine/{ids[1]}/"]
    assert not any(o.key.startswith(f"quarantine/{ids[0]}/") for o in dest.list("quarantine/"))
    # a forced retry of an unchanged bad capture counts one more attempt, with the same reason
    again = retry_quarantined(src, dest, accepted_sizes=SIZES)
    assert list(again.quarantined) == [f"captures/{ids[1]}.json"] and again.new == []
    assert list_quarantine(dest)[0]["attempts"] == 2
    # the sidecar is fixed (re-uploaded): the watermark sees it, it is ingested and released
    time.sleep(0.01)
    sc = json.loads(src.get(f"captures/{ids[1]}.json"))
    sc["image"]["sha256"] = hashlib.sha256(src.get(f"captures/{ids[1]}.png")).hexdigest()
    src.put(f"captures/{ids[1]}.json", json.dumps(sc).encode(), overwrite=True)
    third = ingest(src, dest, accepted_sizes=SIZES)
    assert third.new == [ids[1]] and third.released == [f"quarantine/{ids[1]}/"]
    assert list_quarantine(dest) == []
    assert sorted(o.key for o in dest.list("captures/") if o.key.endswith(".json")) == sorted(
        f"captures/{i}.json" for i in ids
    )


def test_an_orphan_image_is_reported_after_the_grace_period(store, tmp_path):
    src, manifest = store
    cid = manifest.capture_id[0]
    sidecar = src.get(f"captures/{cid}.json")
    src.delete(f"captures/{cid}.json")
    dest = LocalStore(tmp_path / "dest")
    assert ingest(src, dest, accepted_sizes=SIZES).orphans == []  # within the grace period: not yet
    res = ingest(src, dest, accepted_sizes=SIZES, orphan_grace_s=0)
    assert res.orphans == [f"captures/{cid}.png"]
    (entry,) = list_quarantine(dest)
    assert entry["kind"] == "orphan" and f"no sidecar {cid}.json" in entry["reason"]
    assert ingest(src, dest, accepted_sizes=SIZES, orphan_grace_s=0).orphans == [f"captures/{cid}.png"]
    assert list_quarantine(dest)[0]["attempts"] == 1  # reported, not re-added every run
    time.sleep(0.01)
    src.put(f"captures/{cid}.json", sidecar)  # the sidecar arrives
    res = ingest(src, dest, accepted_sizes=SIZES, orphan_grace_s=0)
    assert res.new == [cid] and res.orphans == [] and list_quarantine(dest) == []


def test_a_store_failure_stops_ingest_without_quarantining(store, tmp_path):
    src, manifest = store

    class Flaky:
        def __init__(self, inner, fail_after):
            self.inner, self.uri, self.left = inner, inner.uri, fail_after

        def get(self, key):
            self.left -= 1
            if self.left < 0:
                raise StoreUnavailable("object store unreachable: test")
            return self.inner.get(key)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    dest = LocalStore(tmp_path / "dest")
    with pytest.raises(StoreUnavailable):
        ingest(Flaky(src, fail_after=7), dest, accepted_sizes=SIZES)
    assert list_quarantine(dest) == []
    part = [o.key for o in dest.list("captures/") if o.key.endswith(".json")]
    assert 0 < len(part) < len(manifest)
    rest = ingest(src, dest, accepted_sizes=SIZES)
    assert sorted(part + [f"captures/{c}.json" for c in rest.new]) == sorted(
        f"captures/{c}.json" for c in manifest.capture_id
    )


def test_objects_vanishing_between_list_and_get(store, tmp_path):
    src, manifest = store
    ids = list(manifest.capture_id)
    saved = {k: src.get(k) for k in (f"captures/{ids[0]}.json", f"captures/{ids[1]}.png")}
    dest = LocalStore(tmp_path / "dest")
    res = ingest(LosingStore(src, set(saved)), dest, accepted_sizes=SIZES)
    assert res.vanished == [f"captures/{ids[0]}.json"] and list(res.quarantined) == [f"captures/{ids[1]}.json"]
    time.sleep(0.01)
    for k, v in saved.items():  # both come back
        src.put(k, v)
    res = ingest(src, dest, accepted_sizes=SIZES)
    assert sorted(res.new) == sorted(ids[:2]) and list_quarantine(dest) == []


def test_writer_lock_one_writer_at_a_time(tmp_path):
    dest = LocalStore(tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder():
        with writer_lock(dest, "ingest"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    with pytest.raises(WriterBusy, match=rf"busy: ingest \(pid {os.getpid()} "):
        with writer_lock(dest, "manifest refresh"):
            pass
    threading.Timer(0.3, release.set).start()
    t0 = time.monotonic()
    with writer_lock(dest, "second ingest", wait=10):  # waits for the first, then gets it
        assert time.monotonic() - t0 >= 0.2
    t.join()
    assert [o.key for o in dest.list()] == []  # the lock file is not an object


def test_ingest_removes_temp_files_of_killed_writers(store, tmp_path):
    src, _ = store
    dest = LocalStore(tmp_path / "dest")
    for rel in ("captures/.tmp-abc", "state/.tmp-def", ".tmp-manifest.csv-x", "quarantine/x/.tmp-1"):
        (dest.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest.root / rel).write_bytes(b"half")
    res = ingest(src, dest, accepted_sizes=SIZES)
    assert len(res.cleaned) == 4 and not list(dest.root.rglob(".tmp-*"))


def test_cli_ingest_and_quarantine_retry(store, tmp_path):
    from typer.testing import CliRunner

    from alloynet.cli import app

    src, manifest = store
    ids = list(manifest.capture_id)
    img = src.get(f"captures/{ids[0]}.png")
    src.delete(f"captures/{ids[0]}.png")
    dest = tmp_path / "dest"
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(src.root), str(dest)])  # the default sizes exclude 32x32
    assert res.exit_code == 0 and "0 new" in res.output and "size 32x32 not accepted" in res.output
    res = runner.invoke(app, ["data", "quarantine", str(dest), "--retry", "--accept-size", "32x32"])
    assert res.exit_code == 0, res.output
    assert f"quarantined captures/{ids[0]}.json" in res.output and "image file missing" in res.output
    assert "2 attempt(s)" in res.output and "1 quarantined" in res.output
    src.put(f"captures/{ids[0]}.png", img)
    res = runner.invoke(app, ["ingest", str(src.root), str(dest), "--accept-size", "32x32"])
    assert res.exit_code == 0, res.output
    assert f"released quarantine/{ids[0]}/" in res.output and f"manifest: {len(ids)} captures (updated)" in res.output
    res = runner.invoke(app, ["data", "quarantine", str(dest)])
    assert res.exit_code == 0 and res.output.strip() == "0 quarantined"
    assert ids[0] in (dest / "manifest.csv").read_text()
    with writer_lock(LocalStore(dest), "ingest"):  # a second writer is told, and exits 75
        res = runner.invoke(app, ["ingest", str(src.root), str(dest)])
    assert res.exit_code == 75 and "is busy: ingest (pid" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_unreachable_store_is_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from alloynet.cli import app
    from infra.processes import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    url = f"s3://captures/lab?endpoint=http://127.0.0.1:{free_port()}"
    res = CliRunner().invoke(app, ["ingest", url, str(tmp_path / "dest")])
    assert res.exit_code == 1
    assert res.output.startswith("error: object store unreachable: s3://captures/lab/")
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_quarantine_entries_of_one_source_are_not_touched_by_another(store, tmp_path):
    src, manifest = store
    cid = manifest.capture_id[0]
    nested = LocalStore(src.root / "lab2")  # a source whose location lies inside the first one's
    nested.put(f"captures/{cid}.png", src.get(f"captures/{cid}.png"))
    dest = LocalStore(tmp_path / "dest")
    assert ingest(nested, dest, accepted_sizes=SIZES, orphan_grace_s=0).orphans == [f"captures/{cid}.png"]
    res = ingest(src, dest, accepted_sizes=SIZES, orphan_grace_s=0)
    assert res.released == [] and len(res.new) == len(manifest)
    assert [e["source_uri"] for e in list_quarantine(dest)] == [nested.uri]


def test_cli_full_disk_is_one_line_and_loses_nothing(store, tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from alloynet.cli import app

    src, manifest = store
    real_put, calls = LocalStore.put, {"n": 0}

    def put(self, key, data, **kw):
        if self.root != src.root and key.startswith("captures/"):
            calls["n"] += 1
            if calls["n"] > 6:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path(key)))
        return real_put(self, key, data, **kw)

    monkeypatch.setattr(LocalStore, "put", put)
    args = ["ingest", str(src.root), str(tmp_path / "dest"), "--accept-size", "32x32"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "No space left on device" in res.output
    assert len(res.output.strip().splitlines()) == 1 and list_quarantine(LocalStore(tmp_path / "dest")) == []
    monkeypatch.undo()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and res.output.startswith(f"{len(manifest) - 3} new"), res.output
