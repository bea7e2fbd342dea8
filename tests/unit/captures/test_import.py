"""`alloynet import`: a lab's ImageFolder tree or labels CSV -> captures that ingest, the manifest and the
loader read unchanged. Fixtures are tiny 8x16 images written with Pillow, built per test."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alloynet.captures.format import parse_sidecar
from alloynet.captures.importing import capture_id_for, resolve_alloy
from alloynet.captures.layout import read_capture
from alloynet.captures.stores import LocalStore
from alloynet.cli import app
from alloynet.data.manifest import dark_flat_levels, ingest_and_refresh, read_manifest

runner = CliRunner()
H, W = 8, 16
SIZE = ["--accept-size", f"{H}x{W}"]
RIG = ["--kvp", "50", "--wedge-mm", "50", "--thickness-mm", "2", *SIZE]


def _png(path: Path, arr: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _tiff_pages(path: Path, pages: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [Image.fromarray(p) for p in pages]
    first.save(path, save_all=True, append_images=rest)


def _pixels(seed: int, shape=(H, W), lo=2000, hi=40000) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.uint16)


def _run(*args: str):
    return runner.invoke(app, ["import", *map(str, args)])


def _captures(store: Path) -> dict[str, dict]:
    """sidecar by the source path it came from (``source`` is "import <path relative to ROOT>")."""
    out = {}
    for p in sorted((store / "captures").glob("*.json")):
        sc = json.loads(p.read_text())
        out[sc["source"].removeprefix("import ")] = sc
    return out


def _listing(store: Path) -> dict[str, str]:
    """The store's objects (as its own listing gives them) and their bytes' hashes."""
    st = LocalStore(store)
    return {i.key: hashlib.sha256(st.get(i.key)).hexdigest() for i in st.list()}


@pytest.fixture
def folder_tree(tmp_path):
    """ROOT/{train,test}/{Al1050,7075,al5083}/*.png|tif, dark/flat frames at the root, and a nearer flat in
    train/Al1050 (its images must take that one)."""
    root = tmp_path / "lab"
    pix = {}
    for s, split in enumerate(("train", "test")):
        for c, cls in enumerate(("Al1050", "7075", "al5083")):
            for i in range(2):
                ext = "png" if i == 0 else "tif"
                pix[f"{split}/{cls}/p{i}.{ext}"] = _png(
                    root / split / cls / f"p{i}.{ext}", _pixels(100 * s + 10 * c + i)
                )
    _png(root / "dark.png", np.full((H, W), 1000, np.uint16))
    flat = np.full((H, W), 50000, np.uint16)
    flat[0, 0], flat[0, 1] = 0, 65535  # a dead and a saturated pixel: left out of the level
    _png(root / "flat.tif", flat)
    _png(root / "train" / "Al1050" / "flat.png", np.full((H, W), 42000, np.uint16))
    return root, pix


def test_image_folder_lands_as_captures_that_ingest_and_the_manifest_read(folder_tree, tmp_path):
    root, pix = folder_tree
    store = tmp_path / "store"
    res = _run(root, store, *RIG)
    assert res.exit_code == 0, res.output
    caps = _captures(store)
    assert sorted(caps) == sorted(pix)
    for rel, sc in caps.items():
        cap = read_capture(LocalStore(store), sc["capture_id"], accepted_sizes={(H, W)})
        np.testing.assert_array_equal(cap.image[0], pix[rel])  # pixels exactly as in the lab's file
        assert cap.sidecar.truth.alloy == {"Al1050": "Al1050", "7075": "Al7075", "al5083": "Al5083"}[rel.split("/")[1]]
        assert cap.sidecar.truth.nominal_thickness_mm == 2.0 and cap.sidecar.rig.kvp == [50.0]
        assert cap.sidecar.calibration.dark_adu == [1000.0]
        # the nearest flat wins: train/Al1050 has its own; the root's ignores its dead and saturated pixel
        assert cap.sidecar.calibration.flat_adu == [42000.0 if rel.startswith("train/Al1050/") else 50000.0]
        assert sc["capture_id"] == capture_id_for(rel, hashlib.sha256((root / rel).read_bytes()).hexdigest())
    sessions = {sc["calibration"]["session"] for sc in caps.values()}
    assert len(sessions) == 2 and all((store / "calibration" / s / "flat.png").exists() for s in sessions)

    # the split folders are kept in the manifest: test stays test; train plates go to train (or val, which
    # the loader needs one plate of per class)
    df = read_manifest(store / "manifest.csv").set_index("capture_id")
    for rel, sc in caps.items():
        split = df.loc[sc["capture_id"], "split"]
        assert split == "test" if rel.startswith("test/") else split in ("train", "val"), (rel, split)
    dark, flat = dark_flat_levels(df.reset_index())
    assert set(dark.ravel()) == {1000.0} and set(flat.ravel()) == {42000.0, 50000.0}

    # ingest verifies every capture (hash, shape, calibration) and stores them all: none quarantined
    ing, df2, _ = ingest_and_refresh(LocalStore(store), LocalStore(tmp_path / "data"), accepted_sizes={(H, W)})
    assert len(ing.new) == len(pix) and not ing.quarantined and len(df2) == len(pix)


def test_rerun_is_idempotent_and_never_overwrites(folder_tree, tmp_path):
    root, pix = folder_tree
    store = tmp_path / "store"
    assert _run(root, store, *RIG).exit_code == 0
    before = _listing(store)
    res = _run(root, store, *RIG)
    assert res.exit_code == 0, res.output
    assert _listing(store) == before  # byte-identical, manifest included
    assert f"0 imported, {len(pix)} already present, 0 rejected" in res.output

    # other labels for the same files: rejected as conflicts, the stored captures kept
    res = _run(root, store, "--kvp", "50", "--wedge-mm", "50", "--thickness-mm", "3", *SIZE, "--details")
    assert res.exit_code == 1 and _listing(store) == before
    assert f"error: already imported with other labels or settings: {len(pix)} files: " in res.output
    assert res.output.count("already imported with other labels or settings: as imp-") == len(pix)  # --details
    assert "truth.nominal_thickness_mm: stored 2.0, now 3.0" in res.output

    # a changed file is a new capture beside the old one
    _png(root / "test" / "7075" / "p0.png", _pixels(999))
    res = _run(root, store, *RIG)
    assert f"1 imported, {len(pix) - 1} already present" in res.output
    assert len(list((store / "captures").glob("*.json"))) == len(pix) + 1
    after = _listing(store)
    assert {k: after[k] for k in before if k != "manifest.csv"} == {
        k: h for k, h in before.items() if k != "manifest.csv"
    }


def test_each_unusable_file_is_reported_with_its_path_and_reason(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    good = _png(root / "Al6082" / "ok.png", _pixels(1))
    _png(root / "Al6082" / "wide.png", _pixels(2, (H, 2 * W)))
    _png(root / "Al6082" / "eight.png", np.full((H, W), 200, np.uint8))
    _png(root / "Steel" / "x.png", _pixels(3))
    _png(root / "loose.png", _pixels(4))
    (root / "Al6082" / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    (root / "Al6082" / "truncated.png").write_bytes((root / "Al6082" / "ok.png").read_bytes()[:60])
    (root / "Al6082" / "notes.txt").write_text("plate 7 looked scratched")
    Image.fromarray(np.full((H, W), 90, np.uint8)).save(root / "Al6082" / "photo.jpg")
    _png(root / "Al2017" / "nocal.png", _pixels(5))
    for name, level in (("dark", 900), ("flat", 30000)):
        _png(root / "Al6082" / f"{name}.png", np.full((H, W), level, np.uint16))
    args = (root, store, "--kvp", "50", "--wedge-mm", "50", "--thickness-mm", "1.5", *SIZE)
    res = _run(*args, "--details")
    assert res.exit_code == 1, res.output  # files were rejected: the run is not clean, though ok.png is in
    lines = res.output.splitlines()

    def reason(rel: str) -> str:
        hits = [ln for ln in lines if ln.startswith(f"rejected {root / rel}: ")]
        assert len(hits) == 1, (rel, res.output)
        return hits[0].split(": ", 1)[1]

    assert "image size differs" in reason("Al6082/wide.png") and "8x32" in reason("Al6082/wide.png")
    assert "unknown class folder: 'Steel'" in reason("Steel/x.png")
    assert "not inside a class folder" in reason("loose.png")
    assert reason("Al6082/corrupt.tif").startswith("unreadable image")
    assert reason("Al6082/truncated.png").startswith("unreadable image")
    assert reason("Al6082/photo.jpg") == "8-bit JPEG: lossy, not a detector image"
    assert reason("Al2017/nocal.png") == "missing settings: dark, flat"
    assert reason("Al6082/eight.png") == "8-bit image"
    assert sum(ln.startswith("rejected ") for ln in lines) == 8
    # the notes are skipped, not rejected; each problem is one line with its fix
    assert not any("notes.txt" in ln for ln in lines if ln.startswith(("rejected", "error")))
    assert "skipped 1 file(s) that are not images: Al6082/notes.txt" in res.output
    assert "error: 8-bit image: 1 file: Al6082/eight.png" in lines
    assert (
        lines[lines.index("error: 8-bit image: 1 file: Al6082/eight.png") + 1].startswith("  fix: ")
        and "--allow-8bit" in lines[lines.index("error: 8-bit image: 1 file: Al6082/eight.png") + 1]
    )
    caps = _captures(store)
    assert sorted(caps) == ["Al6082/ok.png"]
    ok = read_capture(LocalStore(store), caps["Al6082/ok.png"]["capture_id"], accepted_sizes={(H, W)})
    np.testing.assert_array_equal(ok.image[0], good)
    assert ok.sidecar.calibration.dark_adu == [900.0] and ok.sidecar.calibration.flat_adu == [30000.0]
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("import: "))) :]
    assert [ln.split() for ln in table if ln.split()[:1] == ["Al6082"]] == [["Al6082", "1", "0", "5"]]
    assert [ln.split() for ln in table if ln.split()[:1] == ["(unknown)"]] == [["(unknown)", "0", "0", "2"]]

    # with --allow-8bit the 8-bit image is imported, its values kept as they are and its depth recorded
    res = _run(*args, "--allow-8bit")
    assert res.exit_code == 1 and "warning: 1 8-bit image(s) imported (--allow-8bit" in res.output
    eight = _captures(store)["Al6082/eight.png"]
    assert eight["rig"]["bit_depth"] == 8 and _captures(store)["Al6082/ok.png"]["rig"].get("bit_depth") is None
    cap = read_capture(LocalStore(store), eight["capture_id"], accepted_sizes={(H, W)})
    assert cap.image.dtype == np.uint16 and int(cap.image.max()) == 200


def test_labels_csv_layout_with_per_row_settings_and_multi_page_tiff(tmp_path):
    root, store = tmp_path / "flat", tmp_path / "store"
    a = _png(root / "a.png", _pixels(1))
    _png(root / "b.png", _pixels(2))
    _tiff_pages(root / "dual.tif", [_pixels(3), _pixels(4, lo=5000, hi=60000)])
    _png(root / "neg.png", _pixels(5))
    _png(root / "stray.png", _pixels(6))
    _png(root / "frames" / "d1.png", np.full((H, W), 800, np.uint16))
    (root / "labels.csv").write_text(
        "file,alloy,thickness_mm,plate_id,wedge_mm,kvp,dark,flat\n"
        "a.png,Al1050,2.5,P1,,,frames/d1.png,45000\n"
        "b.png,2017,,P1,70,,,\n"
        "dual.tif,al7075,3,P2,,40;60,100;110,40000;52000\n"
        "neg.png,Al5083,-1,P3,,,,\n"
        "missing.png,Al5083,1,P4,,,,\n"
        "a.png,Al1050,2.5,P1,,,,\n"
    )
    res = _run(
        root / "labels.csv",
        store,
        "--kvp",
        "50",
        "--wedge-mm",
        "50",
        "--thickness-mm",
        "1",
        "--dark-level",
        "1000",
        "--flat-level",
        "48000",
        *SIZE,
        "--details",
    )
    assert res.exit_code == 1, res.output  # four rows or files rejected; the others imported
    caps = _captures(store)
    assert sorted(caps) == ["a.png", "b.png", "dual.tif"]
    ca, cb, cd = caps["a.png"], caps["b.png"], caps["dual.tif"]
    assert (ca["truth"]["alloy"], ca["truth"]["nominal_thickness_mm"], ca["plate_id"]) == ("Al1050", 2.5, "P1")
    assert ca["calibration"]["dark_adu"] == [800.0] and ca["calibration"]["flat_adu"] == [45000.0]  # row wins
    assert (cb["truth"]["alloy"], cb["truth"]["nominal_thickness_mm"], cb["rig"]["wedge_mm"]) == ("Al2017", 1.0, 70.0)
    assert cb["calibration"]["dark_adu"] == [1000.0] and cb["calibration"]["flat_adu"] == [48000.0]  # options
    assert cd["rig"]["kvp"] == [40.0, 60.0] and cd["image"]["format"] == "tiff" and cd["image"]["shape"] == [2, H, W]
    assert cd["calibration"]["flat_adu"] == [40000.0, 52000.0]
    np.testing.assert_array_equal(read_capture(LocalStore(store), ca["capture_id"], {(H, W)}).image[0], a)
    dual = read_capture(LocalStore(store), cd["capture_id"], {(H, W)}).image
    np.testing.assert_array_equal(dual[1], _pixels(4, lo=5000, hi=60000))
    out = res.output
    assert (
        f"rejected {root / 'neg.png'}: bad value in labels.csv column thickness_mm: labels.csv line 5: "
        "thickness_mm: expected a number > 0, got '-1'"
    ) in out
    assert (
        f"rejected {root / 'missing.png'}: file named in labels.csv not found: labels.csv line 6: file not found" in out
    )
    assert (
        f"rejected {root / 'a.png'}: listed twice in labels.csv: labels.csv line 7: listed again (first on line 2)"
        in out
    )
    assert f"rejected {root / 'stray.png'}: not listed in labels.csv" in out
    assert (
        "error: not listed in labels.csv: 1 file: stray.png" in out and "  fix: add a row for it to labels.csv" in out
    )
    assert (
        sum(ln.startswith("rejected ") for ln in out.splitlines()) == 4
    )  # the frame the CSV names is not reported as unlisted
    df = read_manifest(store / "manifest.csv")
    assert df[df.plate_id == "P1"].split.nunique() == 1  # one plate, one split


def test_pages_must_match_kvp_and_bad_settings_name_the_field(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    _tiff_pages(root / "Al1050" / "dual.tif", [_pixels(1), _pixels(2)])
    _png(root / "Al1050" / "one.png", _pixels(3))
    res = _run(root, store, *RIG, "--dark-level", "1000", "--flat-level", "50000")
    assert res.exit_code == 1, res.output
    assert (
        "error: pages do not match the kVp settings (2 page(s) but 1 kVp setting(s) [50.0]): 1 file: Al1050/dual.tif"
    ) in res.output

    rig = tmp_path / "rig.yaml"
    rig.write_text("rig: {kvp: [50], wedge_mm: -5}\n")
    res = _run(root, store, "--rig", rig, *SIZE)
    assert res.exit_code == 2 and f"error: {rig}: rig.wedge_mm: Input should be greater than 0, got -5" in res.output
    rig.write_text("rig: {kvp: [50]\n")
    res = _run(root, store, "--rig", rig)
    assert res.exit_code == 2 and f"error: {rig}: not valid YAML" in res.output
    rig.write_text("rig: {kvp: [50], wedge_mm: 50}\nthicknes_mm: 2\n")
    res = _run(root, store, "--rig", rig)
    assert res.exit_code == 2 and "thicknes_mm: Extra inputs are not permitted" in res.output

    csv = tmp_path / "labels.csv"
    csv.write_text("file,thickness\none.png,2\n")
    res = _run(root, store, "--labels", csv, *RIG)
    assert res.exit_code == 2 and f"error: {csv}: missing column(s) 'alloy'" in res.output
    csv.write_text("file,alloy,thicknes_mm\n")
    res = _run(root, store, "--labels", csv, *RIG)
    assert res.exit_code == 2 and "unknown column(s) 'thicknes_mm'; expected columns file, alloy" in res.output


def test_nothing_importable_exits_non_zero(tmp_path):
    root = tmp_path / "lab"
    _png(root / "Brass" / "x.png", _pixels(1))
    res = _run(root, tmp_path / "store", *RIG, "--dark-level", "1000", "--flat-level", "50000")
    assert res.exit_code == 1 and "error: nothing could be imported" in res.output
    assert "error: unknown class folder ('Brass'): 1 file: Brass/x.png" in res.output
    assert not (tmp_path / "store" / "manifest.csv").exists()


def test_a_user_added_alloy_is_a_class_folder_once_configured(tmp_path):
    from alloynet.physics.alloys import ALLOYS

    root, store = tmp_path / "lab", tmp_path / "store"
    _png(root / "3003" / "x.png", _pixels(1))
    rig = root / "rig.yaml"  # inside the tree: not reported as a stray file
    rig.write_text(
        "rig: {kvp: [50], wedge_mm: 50, pixel_size_mm: 0.1}\nthickness_mm: 2\ndark_level: [1000]\n"
        "flat_level: [50000]\ncustom_alloys:\n  Al3003:\n    density_g_cm3: 2.73\n"
        "    nominal_wt_pct: {Mn: 1.2}\n    ranges_wt_pct: {Mn: [1.0, 1.5]}\n"
    )
    assert resolve_alloy("3003") is None
    res = _run(root, store, "--rig", rig, *SIZE)
    assert res.exit_code == 0, res.output
    assert "error" not in res.output and "0 rejected" in res.output
    (sc,) = _captures(store).values()
    assert sc["truth"]["alloy"] == "Al3003" and sc["rig"]["pixel_size_mm"] == 0.1
    assert parse_sidecar((store / "captures" / f"{sc['capture_id']}.json").read_bytes()).truth.alloy == "Al3003"
    assert read_manifest(store / "manifest.csv").label.tolist() == [-1]  # outside the classifier's classes
    assert "Al3003" not in ALLOYS  # the import's table is its own: nothing registered globally


@pytest.mark.s3
def test_import_into_an_s3_store_is_idempotent_and_ingests(s3_server, s3_bucket, tmp_path):
    from alloynet.captures.ingest import ingest
    from alloynet.captures.stores import open_store

    root = tmp_path / "lab"
    for i, cls in enumerate(("Al1050", "Al7075")):
        _png(root / cls / "a.png", _pixels(i))
    uri = f"s3://{s3_bucket}/rig1?endpoint={s3_server.endpoint}"
    args = (root, uri, *RIG, "--dark-level", "1000", "--flat-level", "50000")
    res = _run(*args)
    assert res.exit_code == 0 and "2 imported, 0 already present, 0 rejected" in res.output, res.output
    st = open_store(uri)
    before = {i.key: i.etag for i in st.list("captures/")}
    assert len(before) == 4  # two images, two sidecars
    res = _run(*args)
    assert "0 imported, 2 already present" in res.output and {i.key: i.etag for i in st.list("captures/")} == before
    got = ingest(st, LocalStore(tmp_path / "data"), accepted_sizes={(H, W)})
    assert len(got.new) == 2 and not got.quarantined
