"""Labels are data with a history: a changed label is a conflict or a recorded relabel, never dropped; an
image replaced at the source is noticed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alloynet.captures.format import parse_sidecar
from alloynet.captures.image import CaptureError, decode_image, encode_image, sha256
from alloynet.captures.labels import Correction, history, read_corrections, relabel
from alloynet.captures.layout import list_quarantine
from alloynet.captures.stores import LocalStore
from alloynet.cli import app
from alloynet.data.manifest import ingest_and_refresh, read_manifest, refresh_manifest
from tests.helpers.dummy import DummyCaptureStore

SIZES = {(32, 32)}


@pytest.fixture
def stores(tmp_path):
    with DummyCaptureStore(n_max=3, size=32, imbalance_ratio=3) as (src, manifest):
        (src.root / "manifest.csv").unlink()
        dest = LocalStore(tmp_path / "data")
        ingest_and_refresh(src, dest, accepted_sizes=SIZES)
        yield src, dest, list(manifest.capture_id)


def _reupload_sidecar(src: LocalStore, cid: str, alloy: str, plate: str) -> None:
    raw = json.loads(src.get(f"captures/{cid}.json"))
    raw["truth"]["alloy"], raw["plate_id"] = alloy, plate
    src.put(f"captures/{cid}.json", json.dumps(raw).encode(), overwrite=True)


def _row(dest: LocalStore, cid: str):
    df = read_manifest(dest.root / "manifest.csv")
    return df[df.capture_id == cid].iloc[0]


def _other_alloy(dest, cid):
    return "Al1050" if _row(dest, cid).alloy != "Al1050" else "Al7075"


def test_a_changed_label_is_a_conflict_with_both_values_never_a_duplicate(stores):
    src, dest, ids = stores
    cid = ids[0]
    old, new = _row(dest, cid).alloy, _other_alloy(dest, cid)
    _reupload_sidecar(src, cid, new, "plate-new")
    res, df, _ = ingest_and_refresh(src, dest, accepted_sizes=SIZES)
    assert res.duplicates == [] and list(res.quarantined) == [f"captures/{cid}.json"]
    reason = res.quarantined[f"captures/{cid}.json"]
    assert f"truth.alloy: stored {old!r}, new {new!r}" in reason and "plate_id: stored" in reason
    assert "'plate-new'" in reason
    assert _row(dest, cid).alloy == old  # kept until a relabel is recorded
    [entry] = list_quarantine(dest)
    assert entry["kind"] == "label-conflict" and entry["field"] == "truth.alloy"


def test_relabel_records_a_revision_and_the_manifest_follows(stores, tmp_path):
    src, dest, ids = stores
    cid = ids[0]
    old, new = _row(dest, cid).alloy, _other_alloy(dest, cid)
    _reupload_sidecar(src, cid, new, "plate-new")
    ingest_and_refresh(src, dest, accepted_sizes=SIZES)  # quarantined as a conflict
    csv = tmp_path / "fix.csv"
    csv.write_text(
        "capture_id,field,value,who,why\n"
        f"{cid},alloy,{new},lab-a,XRF says {new}\n{cid},plate_id,plate-new,lab-a,plate re-engraved\n"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["data", "relabel", str(dest.root), str(csv)])
    assert res.exit_code == 0, res.output
    assert f"relabelled {cid} (revision 1)" in res.output and "1 conflict(s) released" in res.output
    assert "manifest: " in res.output and "(updated)" in res.output
    row = _row(dest, cid)
    assert row.alloy == new and row.plate_id == "plate-new"
    assert list_quarantine(dest) == []
    [rev] = history(dest, cid)
    assert rev["changes"]["alloy"] == [old, new] and rev["who"] == "lab-a"
    # the image is untouched; the original labels are kept in the trail
    assert parse_sidecar(dest.get(f"captures/{cid}.json")).image.sha256 == sha256(dest.get(f"captures/{cid}.png"))
    out = runner.invoke(app, ["data", "history", str(dest.root), cid])
    assert out.exit_code == 0 and f"alloy: {old!r} -> {new!r}" in out.output and "revision 1" in out.output
    # applying the same file again records nothing new
    again = runner.invoke(app, ["data", "relabel", str(dest.root), str(csv)])
    assert "0 capture(s) relabelled, 1 already so" in again.output and len(history(dest, cid)) == 1


def test_a_stale_copy_of_the_old_labels_is_not_a_conflict(stores):
    src, dest, ids = stores
    cid = ids[1]
    new = _other_alloy(dest, cid)
    relabel(dest, [Correction(cid, "alloy", new, "lab", "verdict")])
    src.put(f"captures/{cid}.json", src.get(f"captures/{cid}.json"), overwrite=True)  # re-sent unchanged
    res, _, _ = ingest_and_refresh(src, dest, accepted_sizes=SIZES, retry_quarantined=True)
    assert res.quarantined == {} and parse_sidecar(dest.get(f"captures/{cid}.json")).truth.alloy == new


def test_a_relabel_killed_between_revision_and_sidecar_is_finished_not_repeated(stores, monkeypatch):
    src, dest, ids = stores
    cid = ids[0]
    new = _other_alloy(dest, cid)
    real_put = dest.put

    def killed(key, data, **kw):
        if key == f"captures/{cid}.json":
            raise SystemExit("killed")
        return real_put(key, data, **kw)

    monkeypatch.setattr(dest, "put", killed)
    with pytest.raises(SystemExit):
        relabel(dest, [Correction(cid, "alloy", new, "lab", "verdict")])
    monkeypatch.undo()
    res = relabel(dest, [Correction(cid, "alloy", new, "lab", "verdict")])
    assert res.finished == [cid] and res.unchanged == [cid] and len(history(dest, cid)) == 1
    assert parse_sidecar(dest.get(f"captures/{cid}.json")).truth.alloy == new


def test_bad_corrections_name_the_row_and_change_nothing(stores, tmp_path):
    _, dest, ids = stores
    before = {p: p.read_bytes() for p in (dest.root / "captures").iterdir()}
    csv = tmp_path / "bad.csv"
    csv.write_text(f"capture_id,field,value,who,why\n{ids[0]},alloy,Al1050,me,ok\n{ids[1]},thickness_mm,-2,me,typo\n")
    with pytest.raises(CaptureError, match=r"bad.csv:3: value: thickness_mm must be > 0 mm"):
        read_corrections(csv)
    with pytest.raises(CaptureError, match="no stored capture 'nope'"):
        relabel(dest, [Correction(ids[0], "alloy", "Al1050", "me", "ok"), Correction("nope", "alloy", "x", "me", "ok")])
    with pytest.raises(CaptureError, match="'density' is not a label"):
        relabel(dest, [Correction(ids[0], "density", "2.7", "me", "ok")])
    res = CliRunner().invoke(app, ["data", "relabel", str(dest.root), str(csv)])
    assert res.exit_code == 1 and "nothing was changed" in res.output
    assert {p: p.read_bytes() for p in (dest.root / "captures").iterdir()} == before
    assert not (dest.root / "labels").exists()


def test_an_image_replaced_at_the_source_is_a_conflict_until_put_back(stores):
    src, dest, ids = stores
    cid = ids[2]
    original = src.get(f"captures/{cid}.png")
    img = decode_image(original).copy()
    img[0, 0, 0] ^= 1
    src.put(f"captures/{cid}.png", encode_image(img)[0], overwrite=True)  # no new sidecar
    res, _, _ = ingest_and_refresh(src, dest, accepted_sizes=SIZES)
    assert res.image_conflicts == [f"captures/{cid}.png"]
    assert "image changed at the source under the same name" in res.quarantined[f"captures/{cid}.png"]
    assert dest.get(f"captures/{cid}.png") == original
    again, _, _ = ingest_and_refresh(src, dest, accepted_sizes=SIZES)  # reported once, still listed
    assert again.quarantined == {} and again.image_conflicts == [f"captures/{cid}.png"]
    src.put(f"captures/{cid}.png", original, overwrite=True)
    back, _, _ = ingest_and_refresh(src, dest, accepted_sizes=SIZES)
    assert back.image_conflicts == [] and len(back.released) == 1 and list_quarantine(dest) == []


def test_thickness_corrections_and_labelling_an_unlabelled_capture(stores):
    _, dest, ids = stores
    cid = ids[0]
    relabel(
        dest,
        [
            Correction(cid, "nominal_thickness_mm", "2.5", "lab", "micrometer"),
            Correction(cid, "thickness_mm", 2.47, "lab", "micrometer"),
        ],
    )
    refresh_manifest(dest)
    row = _row(dest, cid)
    assert float(row.nominal_thickness_mm) == 2.5 and float(row.thickness_mm) == 2.47
    # an unlabelled capture: the alloy alone is not enough, alloy and thickness together label it
    raw = json.loads(dest.get(f"captures/{ids[1]}.json"))
    raw["truth"] = None
    dest.put(f"captures/{ids[1]}.json", json.dumps(raw).encode(), overwrite=True)
    with pytest.raises(CaptureError, match="is unlabelled: set alloy and nominal_thickness_mm together"):
        relabel(dest, [Correction(ids[1], "alloy", "Al6061", "lab", "verdict")])
    res = relabel(
        dest,
        [
            Correction(ids[1], "alloy", "Al6061", "lab", "verdict"),
            Correction(ids[1], "nominal_thickness_mm", "3", "lab", "verdict"),
        ],
    )
    assert res.applied == {ids[1]: 1}
    [rev] = history(dest, ids[1])
    assert rev["changes"] == {"alloy": [None, "Al6061"], "nominal_thickness_mm": [None, 3.0]}
    assert rev["who"] == "lab" and rev["why"] == "verdict"
