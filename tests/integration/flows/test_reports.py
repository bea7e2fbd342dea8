"""Report files the browser can load: what is published, in which order, under which URLs."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from flows.reports import PLOTS_BY_IMPORTANCE, ReportSite, plots_by_importance, publish_report

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def report_folder(root: Path) -> Path:
    """A report folder as alloynet.evaluate writes it (names only; the bytes do not matter here)."""
    for rel in (
        "plots/thickness_scatter.png",
        "plots/roc.png",
        "plots/confusion.png",
        "plots/pr.png",
        "plots/learning_curves.png",
        "plots/confusion_normalised.png",
        "plots/extra.png",
        "gradcam/A-0001.png",
        "gradcam/0-first.png",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(PNG + rel.encode())
    (root / "metrics.json").write_text("{}")
    (root / "predictions.csv").write_text("capture_id,true,predicted\n")
    (root / "report.md").write_text(
        "# r\n\n![confusion](plots/confusion.png)\n![cam](gradcam/A-0001.png)\n![ext](http://example.invalid/x.png)\n"
    )
    return root


def test_plots_come_by_importance_and_grad_cam_last(tmp_path):
    got = [p.relative_to(tmp_path).as_posix() for p in plots_by_importance(report_folder(tmp_path))]
    assert got == [f"plots/{n}.png" for n in PLOTS_BY_IMPORTANCE] + [
        "plots/extra.png",
        "gradcam/0-first.png",
        "gradcam/A-0001.png",
    ]


def test_without_a_report_store_the_report_names_files_instead_of_broken_images(tmp_path):
    rep = publish_report(report_folder(tmp_path / "r"), "run/tiny", None)
    assert rep.urls == {} and rep.location == str((tmp_path / "r").resolve())
    assert "file://" not in rep.markdown and "![confusion]" not in rep.markdown
    assert f"`{(tmp_path / 'r').resolve() / 'plots/confusion.png'}` on the worker" in rep.markdown
    assert "![ext](http://example.invalid/x.png)" in rep.markdown  # absolute links are left alone


def test_a_directory_store_needs_its_http_base(tmp_path):
    with pytest.raises(ValueError, match="needs ALLOYNET_REPORTS_URL"):
        ReportSite(str(tmp_path))
    site = ReportSite(str(tmp_path / "site"), public_url="http://127.0.0.1:9/reports/")
    rep = publish_report(report_folder(tmp_path / "r"), "/20260101T020000Z-run/tiny/", site)
    assert rep.url("plots/confusion.png") == "http://127.0.0.1:9/reports/20260101T020000Z-run/tiny/plots/confusion.png"
    assert (
        (tmp_path / "site/20260101T020000Z-run/tiny/plots/confusion.png").read_bytes().endswith(b"plots/confusion.png")
    )
    assert set(rep.urls) == {"report.md", "metrics.json", "predictions.csv", *rep.plots}
    assert f"![confusion]({rep.url('plots/confusion.png')})" in rep.markdown
    assert f"![cam]({rep.url('gradcam/A-0001.png')})" in rep.markdown


def test_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("ALLOYNET_REPORTS", raising=False)
    assert ReportSite.from_env() is None
    monkeypatch.setenv("ALLOYNET_REPORTS", str(tmp_path))
    monkeypatch.setenv("ALLOYNET_REPORTS_URL", "http://127.0.0.1:9/r")
    assert ReportSite.from_env().public_url == "http://127.0.0.1:9/r"
    assert ReportSite.from_env(str(tmp_path / "other")).store.uri == str(tmp_path / "other")


@pytest.mark.s3
def test_s3_reports_get_presigned_urls_a_browser_can_load_without_credentials(s3_server, s3_bucket, tmp_path):
    site = ReportSite(f"s3://{s3_bucket}/nightly?endpoint={s3_server.endpoint}", expires_s=600)
    rep = publish_report(report_folder(tmp_path / "r"), "run/tiny", site)
    url = rep.url("plots/confusion.png")
    assert url.startswith(f"{s3_server.endpoint}/{s3_bucket}/nightly/run/tiny/plots/confusion.png?")
    with urllib.request.urlopen(url, timeout=10) as r:  # no credentials: the signature in the URL is the grant
        assert r.headers["Content-Type"] == "image/png" and r.read().endswith(b"plots/confusion.png")
    with pytest.raises(urllib.error.HTTPError) as denied:  # the same object without a signature is refused
        urllib.request.urlopen(url.split("?")[0], timeout=10)
    assert denied.value.code == 403
    assert rep.location == f"s3://{s3_bucket}/nightly/run/tiny/"


def test_an_unusable_report_store_costs_the_pictures_not_the_night(prefect_harness, tmp_path, monkeypatch):
    from prefect import flow

    from flows.tasks import publish_report_task

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    monkeypatch.setenv("ALLOYNET_REPORTS_URL", "http://127.0.0.1:9/r")
    folder = report_folder(tmp_path / "r")

    @flow
    def publish():
        return publish_report_task(str(folder), "run/tiny", str(blocker / "reports"))

    rep = publish()
    assert rep["urls"] == {} and rep["location"] == str(folder.resolve())
    assert "on the worker (report store unusable: " in rep["markdown"]
