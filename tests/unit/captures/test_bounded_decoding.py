"""Bounded decoding: the image header is read first, and an image that declares more pixels or pages than
the limits, or another shape than its sidecar, is refused before anything is allocated."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from alloynet.captures.format import parse_sidecar, validate_capture
from alloynet.captures.image import MAX_PAGES, CaptureError, decode_image, encode_image, image_shape, sha256
from alloynet.captures.ingest import ingest
from alloynet.captures.stores import LocalStore
from tests.helpers import ROOT
from tests.helpers.dummy import DummyCaptureStore
from tests.helpers.faults import png_bomb, tiff_declaring


@pytest.fixture
def capture():
    with DummyCaptureStore(n_max=3, size=32, imbalance_ratio=3) as (st, manifest):
        cid = manifest.capture_id[0]
        yield st, cid, parse_sidecar(st.get(f"captures/{cid}.json"))


def test_header_shapes_without_decoding():
    img = np.ones((3, 32, 48), np.uint16)
    assert image_shape(encode_image(img[:1])[0]) == (1, 32, 48)
    assert image_shape(encode_image(img)[0]) == (3, 32, 48)
    assert image_shape(tiff_declaring(4000)) == (1, 4000, 4000)


def test_a_png_bomb_is_refused_by_its_header(capture):
    st, cid, sc = capture
    bomb = png_bomb(12000)
    assert len(bomb) < 400_000
    sc.image.sha256 = sha256(bomb)
    with pytest.raises(CaptureError, match="image declares 12000x12000 px, sidecar says 32x32") as err:
        validate_capture(sc, bomb, "bomb.png", {(32, 32)})
    assert err.value.field == "image.shape"


def test_images_over_the_limits_are_refused_whatever_the_caller_expects():
    with pytest.raises(CaptureError, match=r"image declares 1x20000x20000 = 400000000 pixels; at most"):
        decode_image(tiff_declaring(20000), "big.tiff")
    with pytest.raises(CaptureError, match="image declares 1x12000x12000"):
        decode_image(png_bomb(12000), "big.png")
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((MAX_PAGES + 4, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(CaptureError, match=f"TIFF declares more than {MAX_PAGES} pages"):
        decode_image(buf.getvalue(), "pages.tiff")
    with pytest.raises(CaptureError, match="image declares 3 channel.s., sidecar says 1"):
        decode_image(encode_image(np.ones((3, 8, 8), np.uint16))[0], "c.tiff", expected_shape=[1, 8, 8])


def test_ingest_quarantines_a_bomb_and_stays_small(capture, tmp_path):
    """In a fresh process: validating the bomb must not grow its memory by the decoded size (288 MB)."""
    st, cid, sc = capture
    bomb = png_bomb(12000)
    sc.image.sha256 = sha256(bomb)
    st.put(f"captures/{cid}.png", bomb, overwrite=True)
    st.put(f"captures/{cid}.json", sc.model_dump_json().encode(), overwrite=True)
    code = (
        "import resource, sys; from alloynet.captures.stores import LocalStore; "
        "from alloynet.captures.ingest import ingest; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "res = ingest(LocalStore(sys.argv[1]), LocalStore(sys.argv[2]), accepted_sizes={(32, 32)}); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before); "
        "print(list(res.quarantined.values()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(st.root), str(tmp_path / "dest")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    grown_kb, reasons = out.stdout.splitlines()[:2]
    assert "image declares 12000x12000 px, sidecar says 32x32" in reasons
    assert int(grown_kb) < 100_000  # far below the 288 MB the pixels would take
    assert cid not in ingest(st, LocalStore(tmp_path / "dest2"), accepted_sizes={(32, 32)}).new
