"""Evaluation reports the Prefect UI can show: files published over HTTP, plots chosen by importance.

A browser cannot load ``file://`` images of the worker's disk (Chromium: "Not allowed to load local
resource"), so the report folder (report.md, metrics.json, predictions.csv, plots, Grad-CAM) is copied to
a *report store* and every file gets an HTTP URL:

* ``ALLOYNET_REPORTS`` (or the flows' ``reports`` parameter): where to copy, an object-store URI such as
  ``s3://reports/nightly`` (the local stack's SeaweedFS) or a directory.
* ``ALLOYNET_REPORTS_URL``: the public HTTP base under which that store's keys can be read, e.g.
  ``http://127.0.0.1:8333/reports/nightly`` (the stack's ``reports`` bucket allows anonymous reads and
  nothing else). URLs are then permanent, so the artifact history keeps its images.
* Without a public base, S3 files get presigned GET URLs valid for ``ALLOYNET_REPORTS_URL_EXPIRES``
  seconds (default 7 days, the longest AWS Signature V4 allows): older artifacts' images stop loading
  after that, while the files stay in the store.
* With no report store at all, artifacts name the files on the worker's disk instead of showing broken
  images.
"""

from __future__ import annotations

import mimetypes
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alloynet.captures.stores import ObjectStore, S3Store, open_store

REPORTS_ENV, REPORTS_URL_ENV, EXPIRES_ENV = "ALLOYNET_REPORTS", "ALLOYNET_REPORTS_URL", "ALLOYNET_REPORTS_URL_EXPIRES"
DEFAULT_EXPIRES_S = 7 * 24 * 3600
# What a reader needs first: how it confuses classes, how it ranks, whether training converged, the
# regression head, and only then Grad-CAM examples.
PLOTS_BY_IMPORTANCE = ("confusion", "confusion_normalised", "pr", "roc", "learning_curves", "thickness_scatter")
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def plots_by_importance(report_dir: str | Path) -> list[Path]:
    """Plots of a report folder, most important first: the known plots in PLOTS_BY_IMPORTANCE order, other
    plots by name, then Grad-CAM images by name."""
    root = Path(report_dir)
    plots = [p for p in sorted((root / "plots").glob("*")) if p.suffix in IMAGE_SUFFIXES]
    rank = {name: i for i, name in enumerate(PLOTS_BY_IMPORTANCE)}
    plots.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.name))
    cams = [p for p in sorted((root / "gradcam").glob("*")) if p.suffix in IMAGE_SUFFIXES]
    return plots + cams


@dataclass
class PublishedReport:
    """One report folder as the UI sees it: ``urls`` maps a file's path inside the folder to its URL
    (empty when there is no report store); ``markdown`` is report.md with those URLs inlined."""

    folder: str
    location: str
    urls: dict[str, str] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)  # relative paths, most important first
    markdown: str = ""

    def url(self, rel: str) -> str | None:
        return self.urls.get(rel)

    def as_dict(self) -> dict:
        return asdict(self)


class ReportSite:
    """A report store and the rule that turns its keys into URLs a browser can load."""

    def __init__(self, store: ObjectStore | str, public_url: str | None = None, expires_s: int = DEFAULT_EXPIRES_S):
        self.store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
        self.public_url = public_url.rstrip("/") if public_url else None
        self.expires_s = int(expires_s)
        self._signer = None
        if not 0 < self.expires_s <= DEFAULT_EXPIRES_S:
            raise ValueError(
                f"{EXPIRES_ENV}={self.expires_s}: presigned URLs live 1 s to {DEFAULT_EXPIRES_S} s "
                "(7 days, the Signature V4 maximum)"
            )
        if self.public_url is None and not isinstance(self.store, S3Store):
            raise ValueError(
                f"report store {self.store.uri}: a directory needs {REPORTS_URL_ENV} (the HTTP base "
                "that serves it); an S3 store gets presigned URLs without one"
            )

    @classmethod
    def from_env(cls, uri: str | None = None) -> ReportSite | None:
        """The site ``uri`` (or $ALLOYNET_REPORTS) names; None when neither is set."""
        uri = uri or os.environ.get(REPORTS_ENV)
        if not uri:
            return None
        return cls(uri, os.environ.get(REPORTS_URL_ENV) or None, int(os.environ.get(EXPIRES_ENV) or DEFAULT_EXPIRES_S))

    def put(self, key: str, data: bytes) -> None:
        if isinstance(self.store, S3Store):  # with a Content-Type, so browsers render rather than download
            ctype = mimetypes.guess_type(key)[0] or "application/octet-stream"
            if key.endswith(".md"):
                ctype = "text/markdown; charset=utf-8"
            self.store.client.put_object(
                Bucket=self.store.bucket, Key=self.store.prefix + key, Body=data, ContentType=ctype
            )
        else:
            self.store.put(key, data, overwrite=True)  # the same run re-publishing its own report

    def url(self, key: str) -> str:
        if self.public_url:
            return f"{self.public_url}/{key}"
        if self._signer is None:  # Signature V4 explicitly: what AWS requires (and caps at 7 days)
            import boto3
            from botocore.config import Config

            meta = self.store.client.meta
            self._signer = boto3.session.Session().client(
                "s3",
                endpoint_url=meta.endpoint_url,
                region_name=meta.region_name,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
        return self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.store.bucket, "Key": self.store.prefix + key}, ExpiresIn=self.expires_s
        )


def _rewrite_images(markdown: str, urls: dict[str, str], folder: Path, why: str) -> str:
    """Relative image links become URLs; without one, the image becomes a note naming the file."""

    def repl(m: re.Match) -> str:
        alt, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+://", target):
            return m.group(0)
        if target in urls:
            return f"![{alt}]({urls[target]})"
        return f"*{alt or target}: `{folder / target}` on the worker ({why})*"

    return _IMAGE_LINK.sub(repl, markdown)


def publish_report(
    report_dir: str | Path, prefix: str, site: ReportSite | None, why: str = "no report store configured"
) -> PublishedReport:
    """Copy a report folder to ``site`` under ``prefix`` and return its URLs (nothing is copied without a
    site; ``why`` then says so in the markdown)."""
    folder = Path(report_dir).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"report folder {folder} does not exist")
    plots = [p.relative_to(folder).as_posix() for p in plots_by_importance(folder)]
    files = [rel for rel in ("report.md", "metrics.json", "predictions.csv") if (folder / rel).is_file()] + plots
    urls: dict[str, str] = {}
    location = str(folder)
    if site is not None:
        prefix = prefix.strip("/")
        for rel in files:
            site.put(f"{prefix}/{rel}", (folder / rel).read_bytes())
            urls[rel] = site.url(f"{prefix}/{rel}")
        location = f"{site.store.uri.rstrip('/')}/{prefix}/"
    md_path = folder / "report.md"
    markdown = _rewrite_images(md_path.read_text(), urls, folder, why) if md_path.is_file() else ""
    return PublishedReport(folder=str(folder), location=location, urls=urls, plots=plots, markdown=markdown)
