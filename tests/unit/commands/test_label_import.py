"""`alloynet label import`: a lab's verdicts become recorded relabels, reported as `data relabel` reports them."""

from __future__ import annotations

from typer.testing import CliRunner

from alloynet.captures.labels import history
from alloynet.captures.stores import LocalStore
from alloynet.cli import app
from alloynet.data.manifest import ingest_and_refresh, read_manifest
from tests.helpers.dummy import DummyCaptureStore


def test_verdicts_are_applied_once_and_rows_without_one_are_listed(tmp_path):
    with DummyCaptureStore(n_max=3, size=32, imbalance_ratio=3) as (src, manifest):
        (src.root / "manifest.csv").unlink()
        dest = LocalStore(tmp_path / "data")
        ingest_and_refresh(src, dest, accepted_sizes={(32, 32)})
    df = read_manifest(dest.root / "manifest.csv")
    cid, open_id = df.capture_id.iloc[0], df.capture_id.iloc[1]
    new = "Al1050" if df.alloy.iloc[0] != "Al1050" else "Al7075"
    results = tmp_path / "results.csv"
    results.write_text(f"capture_id,alloy,who,method\n{cid},{new},lab-a,XRF\n{open_id},,,\n")
    args = ["label", "import", str(results), "--store", str(dest.root)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"labelled {cid} (revision 1)"
    assert lines[1] == f"1 row(s) without a verdict: {open_id}"
    assert lines[2].startswith("1 capture(s) relabelled") and lines[3].endswith("(updated)")
    [rev] = history(dest, cid)
    assert rev["who"] == "lab-a" and rev["changes"]["alloy"][1] == new
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 capture(s) relabelled, 1 already so" in again.output
    assert again.output.splitlines()[-1].endswith("(unchanged)") and len(history(dest, cid)) == 1
