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


@pytest.mark.parametrize("how, field, text", [
    ("truncate", "image", "corrupt or truncated PNG"),
    ("garbage", "image", "corrupt or truncated PNG"),
    ("hash", "image.sha256", "hash mismatch"),
    ("alloy", "truth.alloy", "unknown alloy 'Al9999'"),
    ("thickness", "truth.nominal_thickness_mm", "thickness must be > 0"),
    ("sidecar_json", "sidecar", "not valid JSON"),
    ("no_image", "image", "image file missing"),
])
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
    assert list(res.quarantined) == [f"captures/{cid}.json"] and "conflicting upload" in res.quarantined[f"captures/{cid}.json"]
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
