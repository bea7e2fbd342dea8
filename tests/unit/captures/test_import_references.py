"""`alloynet import` brings in reference captures beside the plates (ROOT/reference/ folders or CSV roles) and
stores them where `alloynet rig fit` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from PIL import Image
from typer.testing import CliRunner

from alloynet.captures.stores import LocalStore

H, W = 8, 16
BASE = ["--kvp", "50", "--wedge-mm", "50", "--thickness-mm", "2", "--accept-size", f"{H}x{W}"]


def _png(path: Path, value: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(value - 50, value + 50, (H, W)).astype(np.uint16)
    Image.fromarray(arr).save(path)


def _app() -> typer.Typer:
    """`alloynet import` alone: the test does not depend on every other command importing."""
    from alloynet.commands.import_cli import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def _run(*args):
    return CliRunner().invoke(_app(), ["import", *map(str, args)])


def _sidecars(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "captures").glob("*.json"))]


def _lab(root: Path, frames: bool = True) -> None:
    for i in range(2):
        _png(root / "Al7075" / f"p{i}.png", 20000, i)
    if frames:
        for i in range(2):
            _png(root / "reference" / "dark" / f"d{i}.png", 1000 + 10 * i, 10 + i)
            _png(root / "reference" / "open" / f"f{i}.png", 50000 - 100 * i, 20 + i)
    for i in range(3):
        _png(root / "reference" / "wedge-50mm" / f"w{i}.png", 30000, 30 + i)
    for i in range(2):
        _png(root / "reference" / "Al1050-2mm" / f"r{i}.png", 25000, 40 + i)
    (root / "reference" / "README.txt").write_text("taken on the 5th")


def test_reference_folders_become_sessions_wedge_frames_and_reference_plates(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    _lab(root)
    res = _run(root, store, *BASE, "--dark-level", "900", "--flat-level", "40000")
    assert res.exit_code == 0, res.output
    sessions = sorted(p.name for p in (store / "calibration").iterdir())
    ref_sessions = [s for s in sessions if (store / "calibration" / s / "levels.json").exists()]
    assert len(ref_sessions) == 2  # the i-th dark with the i-th open-beam frame
    wedges = sorted((store / "calibration").glob("*/wedge-50mm-*.png"))
    assert len(wedges) == 3 and {w.parent.name for w in wedges} == set(ref_sessions)
    for s in ref_sessions:
        assert (store / "calibration" / s / "dark.png").exists() and (store / "calibration" / s / "flat.png").exists()
        levels = json.loads((store / "calibration" / s / "levels.json").read_text())
        assert 990 < levels["dark_adu"][0] < 1020 and 49800 < levels["flat_adu"][0] < 50010
    refs = [sc for sc in _sidecars(store) if sc["source"].startswith("reference ")]
    plates = [sc for sc in _sidecars(store) if sc["source"].startswith("import ")]
    assert len(refs) == 2 and len(plates) == 2
    assert {sc["plate_id"] for sc in refs} == {"reference-Al1050-2mm"}
    assert {(sc["truth"]["alloy"], sc["truth"]["nominal_thickness_mm"]) for sc in refs} == {("Al1050", 2.0)}
    # each reference capture takes its session's frames in turn; the lab's plates the levels given
    assert sorted(sc["calibration"]["session"] for sc in refs) == ref_sessions
    assert {sc["calibration"]["dark_adu"][0] for sc in plates} == {900.0}
    assert "references for `alloynet rig fit`: 2 session(s), 3 of the 50 mm wedge alone" in res.output
    assert "skipped 1 file(s) that are not images: reference/README.txt" in res.output
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    again = _run(root, store, *BASE, "--dark-level", "900", "--flat-level", "40000")
    assert again.exit_code == 0 and "0 imported, 4 already present" in again.output
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()) == before


def test_without_frames_the_levels_given_go_with_the_wedge_frames(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    _lab(root, frames=False)
    res = _run(root, store, *BASE, "--dark-level", "900", "--flat-level", "40000")
    assert res.exit_code == 0, res.output
    (session,) = [p for p in (store / "calibration").iterdir()]
    assert json.loads((session / "levels.json").read_text()) == {"dark_adu": [900.0], "flat_adu": [40000.0]}
    assert len(list(session.glob("wedge-50mm-*.png"))) == 3 and not list(session.glob("dark.*"))
    assert "(levels only: no dark/flat frames)" in res.output


def test_everything_missing_is_said_once_per_problem(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    _lab(root, frames=False)
    res = _run(root, store, "--accept-size", f"{H}x{W}")
    assert res.exit_code == 1
    lines = res.output.splitlines()
    problem = [ln for ln in lines if ln.startswith("error: missing settings")]
    # one line per distinct set of missing settings, each naming every setting a file lacks
    assert problem == [
        "error: missing settings: dark, flat: 3 files: reference/wedge-50mm/w0.png, "
        "reference/wedge-50mm/w1.png, reference/wedge-50mm/w2.png",
        "error: missing settings: kvp, wedge_mm, dark, flat: 2 files: reference/Al1050-2mm/r0.png, "
        "reference/Al1050-2mm/r1.png",
        "error: missing settings: kvp, wedge_mm, thickness_mm, dark, flat: 2 files: Al7075/p0.png, Al7075/p1.png",
    ], problem
    at = lines.index(problem[-1]) + 1
    fix = " ".join(lines[at : at + 5])  # one line per missing setting, under "fix:"
    assert lines[at].startswith("  fix: kvp: ") and lines[at + 1].startswith("       wedge_mm: ")
    for option in ("--kvp", "--wedge-mm", "--thickness-mm", "--dark-level", "--flat-level"):
        assert option in fix, fix
    assert not [ln for ln in lines if ln.startswith("error") and "README" in ln]


def test_labels_csv_roles(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    _png(root / "a.png", 20000, 1)
    _png(root / "d.png", 1000, 2)
    _png(root / "f.png", 50000, 3)
    _png(root / "w.png", 30000, 4)
    _png(root / "r.png", 25000, 5)
    (root / "labels.csv").write_text(
        "file,alloy,thickness_mm,role,wedge_mm\na.png,Al7075,2,,\nd.png,,,dark,\n"
        "f.png,,,flat,\nw.png,,,wedge,70\nr.png,1050,3,reference,\n"
    )
    res = _run(root / "labels.csv", store, "--kvp", "50", "--wedge-mm", "50", "--accept-size", f"{H}x{W}")
    assert res.exit_code == 0, res.output
    (session,) = [p for p in (store / "calibration").iterdir()]
    assert {p.name.split("-")[0] for p in session.iterdir()} >= {"dark.png", "flat.png", "levels.json", "wedge"}
    assert len(list(session.glob("wedge-70mm-*.png"))) == 1
    ref = [sc for sc in _sidecars(store) if sc["source"] == "reference r.png"]
    assert ref and ref[0]["truth"]["alloy"] == "Al1050" and ref[0]["calibration"]["session"] == session.name
    assert LocalStore(store).root == store.resolve()


def test_labels_csv_problems_are_not_hidden_behind_not_listed(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    _png(root / "train" / "Al7075" / "a.png", 20000, 1)
    _png(root / "train" / "Al7075" / "b.png", 20000, 2)
    _png(root / "train" / "Al1050" / "c.png", 20000, 3)
    _png(root / "train" / "Al1050" / "d.png", 20000, 4)
    wide = root / "train" / "Al1050" / "wide.png"
    Image.fromarray(np.full((H, 2 * W), 20000, np.uint16)).save(wide)
    # paths relative to train/, not to the CSV's folder; one image not listed at all
    (root / "labels.csv").write_text("file,alloy\nAl7075/a.png,Al7075\nAl7075/b.png,Al7075\n")
    res = _run(root / "labels.csv", store, *BASE, "--dark-level", "900", "--flat-level", "40000", "--details")
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "file named in labels.csv not found" in out
    assert "train/Al7075/a.png has that name: the CSV's paths are relative to" in out
    # the images the rows meant are not reported again as unlisted; the others say what else is wrong
    assert f"rejected {root / 'train' / 'Al7075' / 'a.png'}" not in out
    assert "in class folder 'Al1050': without --labels the folder is its label" in out
    assert f"rejected {wide}: not listed in labels.csv: in class folder 'Al1050'" in out and "also 8x32 (HxW)" in out


def test_a_clean_tree_exits_0_and_names_what_it_skipped_and_defaulted(tmp_path):
    root, store = tmp_path / "lab", tmp_path / "store"
    _png(root / "Al7075" / "a.png", 20000, 1)
    (root / "labels.csv").write_text("file,alloy\n")  # a CSV left in an ImageFolder tree: skipped, not rejected
    fake = root / "Al7075" / "b.tif"  # a JPEG under a TIFF name is still a JPEG
    Image.fromarray(np.full((H, W), 90, np.uint8)).save(fake, format="JPEG")
    res = _run(root, store, *BASE, "--dark-level", "900", "--flat-level", "40000")
    assert res.exit_code == 1 and "error: 8-bit JPEG: lossy, not a detector image: 1 file: Al7075/b.tif" in res.output
    fake.unlink()
    res = _run(root, store, *BASE, "--dark-level", "900", "--flat-level", "40000")
    assert res.exit_code == 0, res.output
    assert "skipped 1 file(s) that are not images: labels.csv" in res.output
    defaults = next(ln for ln in res.output.splitlines() if ln.startswith("defaults used"))
    assert "filtration_mm_al=1.0" in defaults and "not recorded: dose" in defaults and "kvp" not in defaults
    odd = _run(
        root,
        tmp_path / "other",
        "--kvp",
        "50",
        "--wedge-mm",
        "50",
        "--thickness-mm",
        "2",
        "--dark-level",
        "900",
        "--flat-level",
        "40000",
    )  # 8x16 is not a standard size
    assert odd.exit_code == 1 and "error: image size 8x16 not accepted" in odd.output
    assert "  fix: --accept-size 8x16" in odd.output
